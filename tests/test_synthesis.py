"""SYN (docs/method.md): equivalence with the base method, criteria, perturbations, DDP statistics, smoke runs."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_step, compose_cfg, load_base_state, make_imagefolder, queue, run_training_step
from fgssl.methods.base import StepState
from fgssl.nets.decoder import Decoder
from fgssl.nets.gradcam import channel_importance
from fgssl.regularizers.syn.regularizer import (
    CAM_CRITERIA,
    CRITERIA,
    DimensionStats,
    bottom_k_mask,
    derangement,
    nu_schedule,
    perturb,
    ranks,
    select_dims,
    spearman_rows,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to OpenMP oversubscription on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = ["data.image_size=32", "synthesis.warmup_epochs=0", "synthesis.ramp_epochs=0"]


def build(name: str, *extra: str, seed: int = 0):
    from fgssl.factory import build_model as build_method

    torch.manual_seed(seed)
    return build_method(compose_cfg([f"method={name}", *queue(name, 64), *SMALL, *extra])).train()


def syn_reg(method):
    from fgssl.regularizers.syn.regularizer import SynthesisRegularizer

    return next(r for r in method.regularizers if isinstance(r, SynthesisRegularizer))


def step_state(method, x1, x2, with_grad: bool = True) -> StepState:
    """What the base training_step hands to a regularizer."""
    a1, z1 = method.encode(x1)
    a2, z2 = method.encode(x2)
    loss = method.fp32(method.ssl_forward, x1, x2, z1, z2).loss
    grads = method.gradcam_grads(loss, (a1, a2)) if with_grad else None
    return StepState((x1, x2), (a1, a2), (z1, z2), loss, grads, 0, 0)


one_step = run_training_step


# ---------------------------------------------------------------------- alpha = nu = 0 == base method
@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_zero_weights_equal_base_method(name):
    base = build(name)
    syn = build(name, "synthesis=syn", "synthesis.alpha=0", "synthesis.nu=0")
    state = load_base_state(base, syn)
    torch.manual_seed(1)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    l0, g0 = assert_same_step(base, syn, x1, x2)
    assert syn_reg(syn).stats.initialised  # the statistics update from step 0 regardless of the weights
    # control: with non-zero weights both the loss and the encoder gradients change
    syn.load_state_dict(state, strict=False)
    reg = syn_reg(syn)
    reg.cfg.alpha, reg.cfg.warmup_epochs, reg.cfg.ramp_epochs, reg.cfg.nu = 0.5, 0, 0, 1.0
    l2, g2 = one_step(syn, x1, x2)
    assert not torch.equal(l2, l0) and any(not torch.equal(g0[k], g2[k]) for k in g0)


# ---------------------------------------------------------------------- statistics and criteria
def test_variance_criterion_picks_lowest_variance_dims():
    torch.manual_seed(0)
    C, rho = 16, 0.25
    std = torch.rand(C) * 3 + 0.1
    stats = DimensionStats(C, 0.99)
    for _ in range(5):
        stats.update((torch.randn(512, C) * std + 5.0).clamp_min(0))
    expected = set(torch.argsort(std)[: int(rho * C)].tolist())
    mask = select_dims("variance", rho, stats.var, None, 3)
    for row in mask:
        assert set(row.nonzero().flatten().tolist()) == expected
    torch.testing.assert_close(stats.var.sqrt(), std, rtol=0.1, atol=0.0)


def test_stats_ema_and_first_update():
    stats = DimensionStats(3, momentum=0.9)
    z1, z2 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 4.0]]), torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    stats.update(z1)  # first update copies the batch moments
    torch.testing.assert_close(stats.mean, z1.mean(0))
    torch.testing.assert_close(stats.var, z1.var(0, unbiased=False))
    stats.update(z2)
    torch.testing.assert_close(stats.mean, 0.9 * z1.mean(0) + 0.1 * z2.mean(0))
    torch.testing.assert_close(stats.var, 0.9 * z1.var(0, unbiased=False) + 0.1 * z2.var(0, unbiased=False))
    assert {"stats.mean", "stats.var", "stats.num_updates"} <= set(
        nn.ModuleDict({"stats": stats}).state_dict().keys())  # buffers: checkpointed


def test_gradcam_importance_matches_finite_differences():
    """``|dL/dz| * z`` from ``dL/dA`` (as the base computes it) vs a central-difference dL/dz."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU()).double()
    head = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])

    def loss_of(z):
        return F.cross_entropy(head(z), y)

    A = conv(x)
    z = A.mean(dim=(2, 3))
    (gA,) = torch.autograd.grad(loss_of(z), [A])
    s = channel_importance(z.detach(), gA, "abs")
    h = 1e-6
    fd = torch.zeros_like(z)
    with torch.no_grad():
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                e = torch.zeros_like(z)
                e[i, j] = h
                fd[i, j] = (loss_of(z + e) - loss_of(z - e)) / (2 * h)
    torch.testing.assert_close(s, fd.abs() * z.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(channel_importance(z.detach(), gA, "signed"), fd * z.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(channel_importance(z.detach(), gA, "grad_only"), fd.abs(), rtol=1e-6, atol=1e-9)


def _scores(n=6, C=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(C, generator=g) + 0.1, torch.rand(n, C, generator=g)


@pytest.mark.parametrize("rho", [0.1, 0.25, 0.5, 0.9])
def test_selected_fraction_equals_ratio(rho):
    var, cam = _scores()
    n, C = cam.shape
    k = int(round(rho * C))
    for crit in ("variance", "gradcam", "both", "top", "random"):
        mask = select_dims(crit, rho, var, cam, n)
        assert mask.shape == (n, C) and mask.dtype == torch.bool
        assert (mask.sum(1) == k).all(), crit
    u = select_dims("union", rho, var, cam, n).sum(1)
    i = select_dims("intersection", rho, var, cam, n).sum(1)
    assert ((u >= k) & (u <= min(C, 2 * k))).all()
    assert ((i <= k) & (i >= max(0, 2 * k - C))).all()


def test_criteria_select_as_named():
    var, cam = _scores()
    n, C = cam.shape
    rho, k = 0.5, 10
    sel = {c: select_dims(c, rho, var, cam, n) for c in CRITERIA}
    # variance: the same k lowest-variance dims for every sample; gradcam: per-sample lowest importance
    assert (sel["variance"] == bottom_k_mask(var.expand(n, C), k)).all()
    assert (sel["gradcam"] == bottom_k_mask(cam, k)).all()
    for i in range(n):
        assert cam[i][sel["gradcam"][i]].max() < cam[i][~sel["gradcam"][i]].min()
    # both: bottom-k of the average of the two ranks
    avg = 0.5 * (ranks(var).expand(n, C) + ranks(cam, 1))
    assert (sel["both"] == bottom_k_mask(avg, k)).all()
    assert not (sel["both"] == sel["variance"]).all() and not (sel["both"] == sel["gradcam"]).all()
    # top: exactly the complement of the bottom set (rho = 0.5), and of bottom (1 - rho) in general
    assert (sel["top"] == ~sel["both"]).all()
    assert (select_dims("top", 0.3, var, cam, n) == ~select_dims("both", 0.7, var, cam, n)).all()
    # random differs from variance (and between calls)
    assert not (sel["random"] == sel["variance"]).all()
    assert not (select_dims("random", rho, var, cam, n) == sel["random"]).all()
    # union contains each set, intersection is contained in each
    for c in ("variance", "gradcam"):
        assert (sel["union"] | sel[c] == sel["union"]).all()
        assert (sel["intersection"] & sel[c] == sel["intersection"]).all()
    assert (sel["union"] == sel["variance"] | sel["gradcam"]).all()
    assert (sel["intersection"] == sel["variance"] & sel["gradcam"]).all()
    # Grad-CAM criteria without a gradient is an error
    with pytest.raises(RuntimeError):
        select_dims("both", rho, var, None, n)
    assert set(CAM_CRITERIA) == {"gradcam", "both", "union", "intersection", "top"}


def test_alpha_zero_freezes_the_decoder():
    m = build("simsiam", "synthesis=syn", "synthesis.alpha=0")
    reg = syn_reg(m)
    assert not any(p.requires_grad for p in reg.decoder.parameters())
    assert not any(g["params"] for g in reg.param_groups(m))  # no empty Adam group reaches the optimizer


def test_spearman_rank_correlation():
    a = torch.rand(3, 50)
    torch.testing.assert_close(spearman_rows(a, a), torch.tensor(1.0))
    torch.testing.assert_close(spearman_rows(a, -a), torch.tensor(-1.0))
    from scipy.stats import spearmanr

    b = torch.rand(3, 50)
    ref = sum(spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(3)) / 3
    assert abs(float(spearman_rows(a, b)) - ref) < 1e-5


# ---------------------------------------------------------------------- perturbations
def test_perturbations_do_what_they_say():
    torch.manual_seed(0)
    n, C = 8, 12
    z = torch.rand(n, C) * 2 + 0.5
    mask = select_dims("random", 0.5, torch.ones(C), None, n)
    mean, var = torch.full((C,), 0.7), torch.full((C,), 0.25)
    for kind in ("shuffle", "gauss", "gauss_dim", "zero", "mean"):
        zt = perturb(z, mask, kind, mean, var, beta=1.0)
        assert torch.equal(zt[~mask], z[~mask]), kind  # unselected dims are untouched
    assert (perturb(z, mask, "zero")[mask] == 0).all()
    assert (perturb(z, mask, "mean", mean=mean)[mask] == 0.7).all()
    # shuffle: one permutation without fixed points, the same for every dim
    g = torch.Generator().manual_seed(3)
    perm = derangement(n, generator=g)
    assert sorted(perm.tolist()) == list(range(n)) and (perm != torch.arange(n)).all()
    zt = perturb(z, torch.ones(n, C, dtype=torch.bool), "shuffle", generator=torch.Generator().manual_seed(3))
    assert torch.equal(zt, z[perm])
    zt = perturb(z, mask, "shuffle")
    for i in range(n):
        src = [r for r in range(n) if r != i and torch.equal(zt[i][mask[i]], z[r][mask[i]])]
        assert len(src) == 1 or not mask[i].any()
    # gauss_dim: z + beta * sigma_j * eps, clamped at 0 (gauss, with the mean sigma: tests/test_faithful.py)
    big = torch.full((20000, 2), 10.0)
    zt = perturb(big, torch.ones_like(big, dtype=torch.bool), "gauss_dim", var=torch.tensor([0.25, 4.0]), beta=0.5)
    torch.testing.assert_close((zt - big).std(0), torch.tensor([0.25, 1.0]), rtol=0.05, atol=0)
    small = torch.zeros(1000, 2)
    zt = perturb(small, torch.ones_like(small, dtype=torch.bool), "gauss", var=torch.ones(2))
    assert (zt >= 0).all() and (zt > 0).any()


# ---------------------------------------------------------------------- decoder, schedule, pair
@pytest.mark.parametrize("size", [16, 32, 112])
def test_decoder_sizes_and_resize_conv(size):
    dec = Decoder(64, size, width=32, min_width=8)
    assert dec(torch.rand(2, 64)).shape == (2, 3, size, size)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in dec.modules())
    # per-sample: decoding a vector does not depend on the rest of the batch
    z = torch.rand(3, 64)
    torch.testing.assert_close(dec(z)[:1], dec(z[:1]))


def test_nu_schedule():
    assert nu_schedule(1.0, 10, 5, 9, 1.0) == 0.0
    assert nu_schedule(1.0, 10, 5, 10, 0.5) == pytest.approx(0.1)
    assert nu_schedule(1.0, 10, 5, 14, 1.0) == pytest.approx(1.0)
    assert nu_schedule(2.0, 10, 5, 30, 0.1) == 2.0
    assert nu_schedule(0.5, 0, 0, 0, 0.0) == 0.5


def test_decoder_gets_no_gradient_from_L_Cp():
    m = build("mocov2", "synthesis=syn")
    reg = syn_reg(m)
    reg.cfg.warmup_epochs, reg.cfg.ramp_epochs, reg.cfg.nu = 0, 0, 1.0
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    terms = reg.loss_terms(m, step_state(m, x1, x2))
    assert set(terms) == {"L_R", "L_Cp"} and terms["L_Cp"][0] == 1.0 and terms["L_R"][0] == 0.05
    m.zero_grad(set_to_none=True)
    terms["L_Cp"][1].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in reg.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    # control: L_R does train the decoder, and the encoder unless recon_trains_encoder=false
    m.zero_grad(set_to_none=True)
    terms["L_R"][1].backward()
    assert all(p.grad is not None for p in reg.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    m.zero_grad(set_to_none=True)
    reg.cfg.recon_trains_encoder = False
    reg.loss_terms(m, step_state(m, x1, x2))["L_R"][1].backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None for p in reg.decoder.parameters())
    # the decoder is in its own Adam group
    (g,) = reg.param_groups(m)
    assert g["optimizer"] == "adam" and g["lr"] == 1e-4 and len(g["params"]) == len(list(reg.decoder.parameters()))


@pytest.mark.parametrize("pair,pair_size", [("synthetic", "input"), ("real", "input"), ("synthetic", "decoder")])
def test_pair_is_built_as_configured(pair, pair_size):
    m = build("simsiam", "synthesis=syn", f"synthesis.pair={pair}", f"synthesis.pair_size={pair_size}",
              "synthesis.pair_hflip=0", "synthesis.pair_fraction=0.5")
    reg = syn_reg(m)
    seen = {}
    real_ssl_loss = m.ssl_loss

    def spy(a, b):
        seen["a"], seen["b"] = a, b
        return real_ssl_loss(a, b)

    m.ssl_loss = spy
    torch.manual_seed(0)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    state = step_state(m, x1, x2)
    terms = reg.loss_terms(m, state)
    assert "L_Cp" in terms and torch.isfinite(terms["L_Cp"][1])
    side = 32 if pair_size == "input" else 16
    assert seen["a"].shape == seen["b"].shape == (4, 3, side, side)
    with torch.no_grad():
        rec = F.interpolate(reg.decoder(state.z[0][:4]), size=(side, side), mode="bilinear", align_corners=False)
    if pair == "real":
        torch.testing.assert_close(seen["a"], x1[:4])
    else:
        torch.testing.assert_close(seen["a"], rec, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen["b"], rec, atol=1e-4)  # perturbed half of the dims
    logs = reg.last_logs
    assert float(logs["syn_selected_frac"]) == 0.5 and -1 <= float(logs["syn_rank_corr"]) <= 1


def test_warm_start_sets_exact_moments_and_keeps_bn():
    from fgssl.regularizers.syn.callback import SynthesisCallback

    m = build("mocov2", "synthesis=syn")
    reg = syn_reg(m)
    torch.manual_seed(0)
    batches = [((torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)), None) for _ in range(3)]
    bn = {k: v.clone() for k, v in m.backbone.named_buffers()}
    assert SynthesisCallback(reg).warm_start(m, batches, max_batches=2) == 2
    for k, v in m.backbone.named_buffers():  # BN running statistics restored
        assert torch.equal(v, bn[k]), k
    assert not m.encodes_view2()  # one-directional MoCo v2: the step (and so the warm start) sees view 1 only
    with torch.no_grad():  # train-mode z of the encoded view of the first two batches
        z = torch.cat([m.encode(b[0][0])[1] for b in batches[:2]])
    torch.testing.assert_close(reg.stats.mean, z.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reg.stats.var, z.var(0, unbiased=False), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- DDP: all-reduced statistics
def _ddp_worker(rank: int, world: int, init_file: str, data: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = data.shape[1] // world
        stats = DimensionStats(data.shape[-1], 0.9)
        for step in range(data.shape[0]):
            stats.update(data[step, rank * b:(rank + 1) * b])
        warm = DimensionStats(data.shape[-1], 0.9)
        warm.set_from_moments(DimensionStats.local_moments(data[0, rank * b:(rank + 1) * b]))
        torch.save({"mean": stats.mean, "var": stats.var, "wmean": warm.mean, "wvar": warm.var},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_stats_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    data = torch.rand(4, 16, 10) * torch.linspace(0.1, 3, 10)  # 4 steps, global batch 16, C = 10
    # fork: the two ranks start in well under a second (spawn would re-import torch + Lightning in each)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), data, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ref = DimensionStats(10, 0.9)
    for step in range(data.shape[0]):
        ref.update(data[step])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["mean"], ref.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["var"], ref.var, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["wmean"], data[0].mean(0), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["wvar"], data[0].var(0, unbiased=False), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- end-to-end smoke runs
@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("synds") / "ds", classes=3, per_class=6, test_per_class=3)


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_smoke_train_with_syn(tiny_ds, tmp_path, name):
    from fgssl.run import train

    out = tmp_path / "run"
    cfg = compose_cfg([f"method={name}", "synthesis=syn", "debug=smoke", "data=imagefolder", f"data.root={tiny_ds}",
                       "synthesis.warmup_epochs=0", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
                       "data.verify_images=false"], out)
    metrics = train(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/retrieval_map"] == pytest.approx(metrics["test/retrieval_map"])
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/L_C", "train/L_R", "train/L_Cp", "train/syn_rank_corr", "train/syn_selected_frac",
                "train/syn_nu", "lr/decoder"):
        assert key in header, key
    assert (out / "figures" / "syn_pairs_epoch000.png").stat().st_size > 500
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert int(state["regularizers.0.stats.num_updates"]) >= 2  # warm start + training steps


def test_syn_with_zero_weights_trains_exactly_like_the_base_run(tmp_path):
    """A whole run, not one step: with alpha = nu = 0 and persistent data-loader workers, SYN (its
    warm-start pass included) must train on the same batches as the base method and end with the
    same weights. The warm start once iterated the training loader itself, which reset the worker
    iterator Lightning had started, and epoch 0 of every SYN run got no batches."""
    from fgssl.run import train

    data = make_imagefolder(tmp_path / "ds", classes=3, per_class=8, test_per_class=1)  # 24 images: 3 batches
    states = {}
    for name, extra in {"base": ["synthesis=none"],
                        "syn": ["synthesis=syn", "synthesis.alpha=0", "synthesis.nu=0"]}.items():
        out = tmp_path / name
        train(compose_cfg(["method=mocov2", "data=imagefolder", f"data.root={data}", "data.num_workers=2",
                           "data.batch_size=8", "data.image_size=32", "trainer.max_epochs=2", "eval.at_end=false",
                           "eval.knn_every_n_epochs=0", "logger=none", "trainer.enable_progress_bar=false", *extra],
                          out))
        states[name] = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    base, syn = states["base"], states["syn"]
    assert syn["global_step"] == base["global_step"] == 6  # 2 epochs x 3 batches in both runs
    for k, v in base["state_dict"].items():  # online and momentum encoders, heads, queue
        torch.testing.assert_close(syn["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)
