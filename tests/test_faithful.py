"""Issue 11, "faithful by default": each test here failed on the code before the fix it names.

* BatchNorm running statistics come from the real views only (SYN pair, LCR, warm start, Grad-CAM);
* defaults: one-directional MoCo v2, SYN pairs over the whole batch, SimSiam's zero_init_residual;
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, compose_cfg, load_base_state, run_training_step
from fgssl.nets.bn_state import bn_buffers, bn_stats_kept
from test_synthesis import SMALL, build, one_thread  # noqa: F401 - same tiny builder; one_thread is autouse


def bn_state(method, skip_regularizers: bool = True) -> dict:
    """Every BatchNorm running buffer of ``method`` by name (the regularizers' own layers left out)."""
    out = {}
    for mod_name, mod in method.named_modules():
        if skip_regularizers and mod_name.startswith("regularizers"):
            continue
        for layer, name, buf in bn_buffers(mod):
            if layer is mod:
                out[f"{mod_name}.{name}"] = buf.detach().clone()
    assert out, "no BatchNorm layer found"
    return out


def assert_same_bn(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"BatchNorm buffer {k} differs"


def _batch(n=4, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


# ---------------------------------------------------------------------- defect 1: BatchNorm statistics
@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
@pytest.mark.parametrize("symmetric", ["false", "true", "split_bn"])
def test_syn_pair_leaves_bn_stats_as_the_real_views_left_them(name, symmetric):
    """After one step with nu > 0, every BN running buffer equals the one the same step's real views leave."""
    if name == "simsiam" and symmetric != "false":
        pytest.skip("method.symmetric and method.bn_splits are MoCo v2 switches")
    extra = [f"method.symmetric={symmetric}"] if name == "mocov2" and symmetric != "split_bn" else []
    if symmetric == "split_bn":  # shuffle BN on one device: a BN subclass that writes its own buffers
        extra = ["method.symmetric=true", "method.bn_splits=2"]
    base = build(name, *extra)
    syn = build(name, *extra, "synthesis=syn", "synthesis.nu=1.0")
    load_base_state(base, syn)
    reg = syn.regularizers[0]
    reg.cfg.warmup_epochs, reg.cfg.ramp_epochs, reg.cfg.nu = 0, 0, 1.0
    x1, x2 = _batch()
    run_training_step(base, x1, x2)
    run_training_step(syn, x1, x2)
    assert float(reg.last_logs["syn_nu"]) == 1.0  # the pair was built and entered the loss
    assert_same_bn(bn_state(base), bn_state(syn))


@pytest.mark.parametrize("name,extra", [("simsiam", []), ("mocov2", ["method.symmetric=true"]),
                                        ("mocov2", ["method.symmetric=false"])])
def test_ssl_loss_uses_batch_statistics_but_keeps_running_ones(name, extra):
    """The pair's loss (L_Cp) is the method's objective on two batches, each with its own batch statistics."""
    m = build(name, *extra)
    x1, x2 = _batch(seed=3)
    before = bn_state(m)
    ref = copy.deepcopy(m)
    _, z1 = ref.encode(x1)  # the unguarded computation: batch statistics, running buffers moved
    _, z2 = ref.encode(x2)
    want = ref.ssl_forward(x1, x2, z1, z2).loss
    got = m.ssl_loss(x1, x2)  # one batched backbone pass, each image with its own batch statistics
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_same_bn(before, bn_state(m))
    g_got = torch.autograd.grad(got, list(m.backbone.parameters()))
    g_want = torch.autograd.grad(want, list(ref.backbone.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):  # control: the unguarded passes did move them
        assert_same_bn(before, bn_state(ref))


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_lcr_step_leaves_encoder_bn_stats_as_the_real_views_left_them(name):
    base = build(name)
    lcr = build(name, "rationale=lcr")
    load_base_state(base, lcr)
    x1, x2 = _batch()
    run_training_step(base, x1, x2)
    run_training_step(lcr, x1, x2)
    assert_same_bn(bn_state(base), bn_state(lcr))


def test_bn_stats_kept_restores_every_buffer():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with bn_stats_kept(net):
        out = net(torch.randn(2, 3, 8, 8))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # batch statistics were used in the forward: the per-channel mean is ~0 after the last BN
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_extra_passes_leave_every_buffer(name):
    """Warm start, SYN figures, LCR figures and localisation Grad-CAM leave every BN buffer unchanged."""
    from fgssl.eval.localisation import lcr_attention, ssl_gradcam
    from fgssl.regularizers.lcr.callback import compute_maps
    from fgssl.regularizers.syn.callback import SynthesisCallback

    m = build(name, "synthesis=syn", "rationale=lcr")
    syn, lcr = m.regularizers
    x1, x2 = _batch(seed=5)
    before = bn_state(m, skip_regularizers=False)
    SynthesisCallback(syn).warm_start(m, [((x1, x2), None)])
    syn.synthesize(m, x1)
    compute_maps(m, lcr, x1)
    ssl_gradcam(m, x1)
    lcr_attention(m, x1)
    assert m.training
    assert_same_bn(before, bn_state(m, skip_regularizers=False))


# ---------------------------------------------------------------------- defects 2, 5, 6: defaults
@pytest.mark.parametrize("experiment", [None, "paper_r50", "syn_alpha_sweep", "syn_nu_sweep", "syn_seeds"])
def test_defaults_are_one_directional_moco_and_full_batch_pairs(experiment):
    cfg = compose_cfg(["synthesis=syn"] + ([f"experiment={experiment}"] if experiment else []))
    assert cfg.method.symmetric is False
    assert cfg.synthesis.pair_fraction == 1.0


def test_cfg_job_shows_the_faithful_defaults():
    out = subprocess.run([sys.executable, "train.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    assert job["method"]["symmetric"] is False
    assert job["synthesis"]["pair_fraction"] == 1.0


def test_one_directional_moco_pair_skips_the_unused_online_pass(monkeypatch):
    m = build("mocov2")
    calls = []
    orig = m.encode
    monkeypatch.setattr(m, "encode", lambda x: calls.append(len(x)) or orig(x))
    m.ssl_loss(*_batch())
    assert len(calls) == 1  # z2 is never read by the one-directional loss


@pytest.mark.parametrize("name,zero", [("simsiam", True), ("mocov2", False)])
def test_zero_init_residual_follows_the_reference_code(name, zero):
    m = build(name)
    last_bns = [blk.bn2.weight for layer in (m.backbone.layer1, m.backbone.layer2, m.backbone.layer3,
                                             m.backbone.layer4) for blk in layer]
    assert all(bool((w == 0).all()) == zero for w in last_bns)
    m2 = build(name, f"backbone.zero_init_residual={str(not zero).lower()}")  # the switch still wins
    assert bool((m2.backbone.layer1[0].bn2.weight == 0).all()) == (not zero)


# ---------------------------------------------------------------------- defect 3: LCR views and faithful mode
def test_lcr_clean_fits_only_views_that_carry_gradient():
    one = build("mocov2", "rationale=lcr")  # one-directional: view 2 has no path to L_C
    assert one.regularizers[0].views == 1
    assert build("mocov2", "rationale=lcr", "method.symmetric=true").regularizers[0].views == 2
    assert build("simsiam", "rationale=lcr").regularizers[0].views == 2


def test_lcr_refuses_to_fit_a_flat_target():
    from fgssl.errors import FgsslError

    with pytest.raises(FgsslError, match="rationale.views=both"):
        build("mocov2", "rationale=lcr", "rationale.views=both")


@pytest.mark.parametrize("extra,match", [(["method=simsiam"], "needs method=mocov2"),
                                         (["method.symmetric=true"], "one-directional")])
def test_lcr_faithful_refuses_other_settings(extra, match):
    from fgssl.errors import FgsslError
    from fgssl.factory import build_model as build_method

    queue = [] if "method=simsiam" in extra else ["method.queue_size=64"]  # SimSiam has no queue
    cfg = compose_cfg([*queue, "data.image_size=32", "rationale=lcr", "rationale.mode=faithful", *extra])
    with pytest.raises(FgsslError, match=match):
        build_method(cfg)


def test_lcr_faithful_uses_the_code_queue_size():
    from omegaconf import open_dict

    from fgssl.factory import resolve_derived as resolve_queue

    for extra, want in (([], 65536), (["method.queue_size=512"], 512)):
        cfg = compose_cfg(["rationale=lcr", "rationale.mode=faithful", *extra])
        with open_dict(cfg):
            resolve_queue(cfg, 2190, 1)
        assert cfg.method.queue_size == want
    cfg = compose_cfg(["rationale=lcr"])  # clean mode keeps the dataset-sized default
    with open_dict(cfg):
        resolve_queue(cfg, 2190, 1)
    assert cfg.method.queue_size == 2176


# ---------------------------------------------------------------------- defect 4: gauss uses the mean sigma
def test_gauss_perturbation_uses_the_mean_sigma():
    from fgssl.regularizers.syn.regularizer import perturb

    big = torch.full((20000, 2), 10.0)
    var = torch.tensor([0.25, 4.0])  # sigma_j = 0.5, 2.0 -> sigma-bar = 1.25
    zt = perturb(big, torch.ones_like(big, dtype=torch.bool), "gauss", var=var, beta=0.5,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((zt - big).std(0), torch.tensor([0.625, 0.625]), rtol=0.05, atol=0)
    zt = perturb(big, torch.ones_like(big, dtype=torch.bool), "gauss_dim", var=var, beta=0.5,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((zt - big).std(0), torch.tensor([0.25, 1.0]), rtol=0.05, atol=0)


# ---------------------------------------------------------------------- also: how far the perturbation moves z
def test_latent_shift_is_logged_every_step():
    from fgssl.regularizers.syn.regularizer import latent_shift

    z = torch.tensor([[3.0, 4.0, 1.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    zt = z.clone()
    assert float(latent_shift(z, zt, mask)) == 0.0
    zt[0, :2] = 0.0
    assert float(latent_shift(z, zt, mask)) == pytest.approx(1.0)  # ||(3, 4)|| / ||(3, 4)||
    m = build("mocov2", "synthesis=syn", "synthesis.perturbation=zero")
    reg = m.regularizers[0]
    for nu in (0.0, 1.0):
        reg.cfg.warmup_epochs, reg.cfg.ramp_epochs, reg.cfg.nu = 0, 0, nu
        run_training_step(m, *_batch())
        assert float(reg.last_logs["syn_shift"]) == pytest.approx(1.0)  # zeroing moves every selected dim by |z|


# ---------------------------------------------------------------------- defect 7: retrieval ties
def _full_sort_retrieval(feats, labels, ks=(1, 5)):
    """Leave-one-out retrieval by a full sort; ties put the other classes first, then the matches."""
    x = torch.nn.functional.normalize(feats.double(), dim=1)
    n = len(x)
    sim = x @ x.t()
    hits, aps = {k: 0 for k in ks}, []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = sorted(others, key=lambda j: (-float(sim[i, j]), int(labels[j] == labels[i])))
        match = [int(labels[j] == labels[i]) for j in order]
        for k in ks:
            hits[k] += int(any(match[:k]))
        if sum(match):
            ranks = [r + 1 for r, t in enumerate(match) if t]
            aps.append(sum((k + 1) / r for k, r in enumerate(ranks)) / len(ranks))
    out = {f"rank{k}": 100.0 * hits[k] / n for k in ks}
    out["map"] = 100.0 * sum(aps) / max(1, len(aps))
    return out


@pytest.mark.parametrize("kind", ["zeros", "tied", "two_points"])
def test_retrieval_ranks_ties_as_a_full_sort(kind):
    from fgssl.eval.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (30,), generator=g)
    if kind == "zeros":
        feats = torch.zeros(30, 8)
    elif kind == "tied":  # few distinct directions: many exact ties, across and within classes
        feats = torch.nn.functional.one_hot(torch.randint(0, 3, (30,), generator=g), 4).float()
    else:
        feats = torch.zeros(30, 8)
        feats[::2, 0] = 1.0
    got = retrieval_metrics(feats, labels, chunk=7)
    want = _full_sort_retrieval(feats, labels)
    assert got["map"] <= 100.0
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-6), k


# ---------------------------------------------------------------------- defect 8: SGD linear head
def test_linear_sgd_head_is_initialised_as_the_lcr_code():
    from fgssl.eval import linear_sgd

    torch.manual_seed(0)
    head = linear_sgd.linear_head(2048, 200)
    assert torch.equal(head.bias, torch.zeros(200))
    w = head.weight.detach()
    assert w.mean().abs() < 1e-3 and abs(float(w.std()) - 0.01) < 5e-4


# ---------------------------------------------------------------------- cost: dL_C/dA only for the views read
def test_gradcam_is_computed_only_for_the_views_a_regularizer_reads(monkeypatch):
    m = build("simsiam", "synthesis=syn")
    reg = m.regularizers[0]
    seen = {}
    orig = reg.loss_terms

    def spy(method, state):
        seen["s"], seen["full"] = state, method.gradcam_grads(state.loss_c, state.A)  # both views
        return orig(method, state)

    monkeypatch.setattr(reg, "loss_terms", spy)
    run_training_step(m, *_batch())
    st, full = seen["s"], seen["full"]
    torch.testing.assert_close(st.grad_A[0], full[0], rtol=0, atol=0)
    assert not st.grad_A[1].any() and full[1].any()  # SYN reads view 1 only: view 2's was never computed


# ---------------------------------------------------------------------- the online pass of view 2
RECON_BOTH = ["synthesis=syn", "synthesis.recon_views=both", "synthesis.nu=0"]


@pytest.mark.parametrize("name,extra,calls", [("mocov2", [], 1), ("mocov2", ["method.symmetric=true"], 2),
                                               ("simsiam", [], 2), ("mocov2", RECON_BOTH, 2)])
def test_online_encoder_sees_view2_only_when_something_reads_it(name, extra, calls):
    """One-directional MoCo v2 encodes only the query view online, as the MoCo v2 code (im_q through the
    online encoder, im_k through the key encoder): the online BN statistics come from view 1 alone."""
    m = build(name, *extra)
    seen = []
    stem = next(mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.Conv2d))  # the online stem
    hook = stem.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    x1, x2 = _batch()
    try:
        run_training_step(m, x1, x2)
    finally:
        hook.remove()
    assert len(seen) == calls and m.encodes_view2() == (calls == 2)
