"""LCR (docs/method.md): equations, Grad-CAM target, pooling, weight-0 equivalence, smoke runs, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import assert_same_step, compose_cfg, load_base_state, make_imagefolder, queue, run_training_step
from fgssl.losses.rationale_fit import minmax_per_image
from fgssl.methods.base import StepState
from fgssl.nets.gradcam import gradcam_map
from fgssl.regularizers.lcr.regularizer import RationaleRegularizer, attention_pool, rationale_target

SRC = Path(__file__).resolve().parents[1] / "src" / "fgssl"
HAS_SYN = (SRC / "fgvr" / "synthesis.py").exists()


def lcr_cfg(**kw):
    base = dict(name="lcr", weight=0.01, projections=5, mode="faithful", temperature=0.4, views="auto",
                log_images_every_n_epochs=0, log_images_n=4)
    base.update(kw)
    return OmegaConf.create(base)


def make_reg(C=6, **kw):
    torch.manual_seed(0)
    reg = RationaleRegularizer(lcr_cfg(**kw), SimpleNamespace(feat_dim=C))
    with torch.no_grad():  # non-trivial BN affine parameters
        reg.branch.bn.weight.uniform_(0.5, 1.5)
        reg.branch.bn.bias.uniform_(-0.3, 0.3)
    return reg.train()


def fixed_tensors(N=3, C=6, h=7, w=7):
    g = torch.Generator().manual_seed(1)
    A = torch.rand(N, C, h, w, generator=g) * 2.0
    G = torch.randn(N, C, h, w, generator=g) * 0.3
    return A, G


def step_state(A1, A2, G1, G2):
    z = (A1.mean((2, 3)), A2.mean((2, 3)))
    return StepState((None, None), (A1, A2), z, torch.zeros(()), (G1, G2), 0, 0)


def branch_reference(A, W, gamma, beta, bn_eps=1e-5):
    """1x1 conv, train-mode BatchNorm (biased batch variance), ReLU, max over the K maps."""
    Y = torch.einsum("kc,nchw->nkhw", W, A)
    mu = Y.mean(dim=(0, 2, 3), keepdim=True)
    var = ((Y - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    Y = (Y - mu) / torch.sqrt(var + bn_eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return torch.relu(Y).max(dim=1).values


def reference_faithful(A, G, W, gamma, beta):
    """The LCR code's equations (docs/method.md, LCR) written out by hand."""
    gc = torch.relu((A * G).sum(dim=1))  # not detached, not normalised
    M = branch_reference(A, W, gamma, beta)
    s = M - M.min()
    att = s / (s.max() + 1e-7)  # batch-global min-max
    p = torch.softmax(gc, dim=-1)  # last axis only
    q = torch.softmax(att, dim=-1)
    loss = (p * (p.log() - q.log())).sum()  # KL(p_gc || p_att), reduction 'sum'
    feat = (A * att[:, None]).mean(dim=(2, 3))
    return loss, feat


def reference_clean(A, G, W, gamma, beta, t):
    gc = torch.relu((A.detach() * G).sum(dim=1)).flatten(1)
    gc = gc / (gc.max(dim=1, keepdim=True).values + 1e-7)
    M = branch_reference(A, W, gamma, beta).flatten(1)
    lo, hi = M.min(dim=1, keepdim=True).values, M.max(dim=1, keepdim=True).values
    att = (M - lo) / (hi - lo + 1e-7)
    p, q = torch.softmax(gc / t, dim=1), torch.softmax(att / t, dim=1)
    loss = (p * (p.log() - q.log())).sum() / A.shape[0]  # batchmean
    feat = (A * att.view(A.shape[0], 1, *A.shape[2:])).mean(dim=(2, 3))
    return loss, feat


def _params(reg):
    b = reg.branch
    return b.proj.weight.detach()[:, :, 0, 0].clone(), b.bn.weight.detach().clone(), b.bn.bias.detach().clone()


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_fit_matches_hand_written_reference(mode):
    reg = make_reg(mode=mode, views="first")
    W, gamma, beta = _params(reg)
    A, G = fixed_tensors()
    A2, G2 = fixed_tensors(C=6)
    A2 = A2.flip(0) + 0.5  # the second view must not matter with views=first
    A_ours = A.clone().requires_grad_(True)
    A_ref = A.clone().requires_grad_(True)
    W_ref = W.clone().requires_grad_(True)

    terms = reg.loss_terms(SimpleNamespace(), step_state(A_ours, A2, G, G2))
    weight, loss = terms["L_fit"]
    assert weight == 0.01
    if mode == "faithful":
        ref, _ = reference_faithful(A_ref, G, W_ref, gamma, beta)
    else:
        ref, _ = reference_clean(A_ref, G, W_ref, gamma, beta, 0.4)
    assert loss.item() > 0
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)

    # same gradients into the encoder map (through the branch and, in faithful mode, the target)
    loss.backward()
    ref.backward()
    assert A_ref.grad.abs().max() > 1e-3
    tol = dict(rtol=1e-4, atol=1e-5 * float(A_ref.grad.abs().max()))
    torch.testing.assert_close(A_ours.grad, A_ref.grad, **tol)
    torch.testing.assert_close(reg.branch.proj.weight.grad[:, :, 0, 0], W_ref.grad, rtol=1e-4, atol=1e-7)

    # the test-time feature (eval-mode BN would use running stats: compare in train mode on purpose)
    with torch.no_grad():
        f = reg.embed(None, A, A.mean((2, 3)))
        _, f_ref = (reference_faithful if mode == "faithful" else
                    lambda *a: reference_clean(*a, 0.4))(A, G, W, gamma, beta)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-7)


def test_faithful_target_keeps_graph_and_clean_detaches():
    A, G = fixed_tensors(N=2)
    A = A.requires_grad_(True)
    assert rationale_target(A, G, "faithful").requires_grad
    assert not rationale_target(A, G, "clean").requires_grad


def test_views_both_averages_the_two_fits():
    reg = make_reg(mode="clean", views="both")
    A1, G1 = fixed_tensors()
    A2, G2 = A1.flip(3), G1.flip(3) * 2
    both = reg.loss_terms(SimpleNamespace(), step_state(A1, A2, G1, G2))["L_fit"][1]
    reg.views = 1
    one = reg.loss_terms(SimpleNamespace(), step_state(A1, A2, G1, G2))["L_fit"][1]
    two = reg.loss_terms(SimpleNamespace(), step_state(A2, A1, G2, G1))["L_fit"][1]
    torch.testing.assert_close(both, 0.5 * (one + two))


def test_target_is_standard_gradcam_tiny_net():
    torch.manual_seed(0)
    conv, head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    A = torch.relu(conv(x))
    loss = F.cross_entropy(head(A.mean(dim=(2, 3))), y)
    (G,) = torch.autograd.grad(loss, A, retain_graph=True)
    alpha = G.mean(dim=(2, 3))  # Grad-CAM channel weights: spatially averaged gradients
    standard = torch.relu((alpha[:, :, None, None] * A).sum(dim=1))
    assert standard.max() > 0
    for mode in ("faithful", "clean"):
        torch.testing.assert_close(rationale_target(A, G, mode), standard, rtol=1e-5, atol=1e-9)


def test_target_from_the_base_step_is_standard_gradcam():
    cfg = compose_cfg(["method=simsiam", "rationale=lcr", "data.image_size=64", "method.proj_dim=512",
                       "method.proj_hidden=512", "method.pred_hidden=128"])
    from fgssl.factory import build_model as build_method

    torch.manual_seed(0)
    m = build_method(cfg).train()
    x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    a1, z1 = m.encode(x1)
    a2, z2 = m.encode(x2)
    loss = m.fp32(m.ssl_forward, x1, x2, z1, z2).loss
    g1, _ = m.gradcam_grads(loss, (a1, a2))
    (gz,) = torch.autograd.grad(loss, z1)
    alpha = gz / (a1.shape[2] * a1.shape[3])  # dL/dz spread over the positions = mean_hw dL/dA
    standard = torch.relu((alpha[:, :, None, None] * a1).sum(dim=1)).detach()
    torch.testing.assert_close(gradcam_map(a1.detach(), g1), standard, rtol=1e-4, atol=1e-12)


def test_uniform_attention_pool_is_gap():
    A, _ = fixed_tensors()
    torch.testing.assert_close(attention_pool(A, torch.ones(A.shape[0], *A.shape[2:])), A.mean(dim=(2, 3)))
    # clean mode: a constant branch map (e.g. a 1x1 layer4) is uniform attention -> plain GAP
    assert torch.equal(minmax_per_image(torch.full((3, 2, 2), 0.7)), torch.ones(3, 2, 2))
    reg = make_reg(mode="clean").eval()
    A1 = torch.rand(3, 6, 1, 1)
    torch.testing.assert_close(reg.embed(None, A1, A1.mean((2, 3))), A1.mean((2, 3)))


# ---------------------------------------------------------------------- weight 0 == base method
_one_step = run_training_step


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_weight_zero_equals_base(name):
    from fgssl.factory import build_model as build_method

    common = [f"method={name}", *queue(name, 64), "data.image_size=64"]
    if name == "simsiam":  # smaller heads: the equivalence does not depend on their width
        common += ["method.proj_dim=512", "method.proj_hidden=512", "method.pred_hidden=128"]
    torch.manual_seed(0)
    base = build_method(compose_cfg(common)).train()
    torch.manual_seed(0)
    lcr = build_method(compose_cfg(common + ["rationale=lcr", "rationale.weight=0"])).train()
    state = load_base_state(base, lcr)
    torch.manual_seed(1)
    x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    l0, g0 = assert_same_step(base, lcr, x1, x2)
    # control: with a weight, the loss and the encoder gradients do change
    lcr.load_state_dict(state, strict=False)
    lcr.regularizers[0].weight = 1.0
    l2, g2 = _one_step(lcr, x1, x2)
    assert l2 > l0 and any(not torch.equal(g0[k], g2[k]) for k in g0)


# ---------------------------------------------------------------------- end-to-end runs
@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("lcrds") / "ds", classes=3, per_class=3, test_per_class=2)


def _train(tiny_ds, out: Path, *extra):
    from fgssl.run import train

    cfg = compose_cfg(["debug=smoke", "data=imagefolder", f"data.root={tiny_ds}", "data.image_size=64",
                       "data.batch_size=8", "eval.linear_wd_grid=[0.0]", "eval.linear_max_iter=10",
                       "rationale=lcr", "rationale.log_images_every_n_epochs=1", "rationale.log_images_n=3",
                       "trainer.enable_progress_bar=false", *extra], out)
    metrics = train(cfg)
    assert (out / "metrics.json").exists()
    assert json.loads((out / "metrics.json").read_text())["test/retrieval_map"] == pytest.approx(
        metrics["test/retrieval_map"])
    assert (out / "figures" / "lcr_maps_epoch000.png").stat().st_size > 1000
    logged = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/L_fit", "train/lcr_target_entropy", "train/lcr_pred_entropy"):
        assert key in logged
    return out


@pytest.fixture(scope="module")
def mocov2_lcr_run(tiny_ds, tmp_path_factory):
    base = tmp_path_factory.mktemp("mocolcr")
    yield _train(tiny_ds, base / "run", "method=mocov2")
    shutil.rmtree(base, ignore_errors=True)  # free the checkpoint's disk once the module is done


def test_smoke_mocov2_lcr(mocov2_lcr_run):
    assert (mocov2_lcr_run / "checkpoints" / "last.ckpt").exists()


def test_smoke_mocov2_lcr_faithful(tiny_ds, tmp_path):
    # faithful = the LCR MoCo v2 code (simsiam is refused: tests/test_faithful.py); queue K = 65,536
    _train(tiny_ds, tmp_path / "run", "method=mocov2", "rationale.mode=faithful", "rationale.projections=8",
           "eval.knn_every_n_epochs=0")


@pytest.mark.skipif(not HAS_SYN, reason="fgssl.regularizers.syn.regularizer (SYN) is not in the tree yet")
@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_smoke_syn_and_lcr(tiny_ds, tmp_path, name):
    _train(tiny_ds, tmp_path / "run", f"method={name}", "synthesis=syn", "eval.knn_every_n_epochs=0")


def test_eval_feature_gap_differs_from_auto(mocov2_lcr_run, tmp_path):
    from fgssl.eval.features import extract_features
    from fgssl.run import evaluate
    from fgssl.rundir import load_trained

    ckpt = mocov2_lcr_run / "checkpoints" / "last.ckpt"
    evaluate(compose_cfg([f"ckpt={ckpt}", "trainer.enable_progress_bar=false"]))
    auto = (mocov2_lcr_run / "metrics_eval_last.json").read_text()
    evaluate(compose_cfg([f"ckpt={ckpt}", "eval.feature=gap", "trainer.enable_progress_bar=false"]))
    # each evaluation has its own file, named by what it evaluated; the first is not overwritten
    assert (mocov2_lcr_run / "metrics_eval_last.json").read_text() == auto
    gap = json.loads((mocov2_lcr_run / "metrics_eval_last_feature-gap.json").read_text())
    assert gap["eval"]["feature"] == "gap" and gap["test/retrieval_map"] != json.loads(auto)["test/retrieval_map"]

    trained = load_trained(ckpt)
    m, dm = trained.model, trained.data
    dev = torch.device("cpu")
    f_auto, y = extract_features(m, dm.test_loader(), dev, "auto", progress=False)
    f_gap, _ = extract_features(m, dm.test_loader(), dev, "gap", progress=False)
    assert f_auto.shape == f_gap.shape and len(y) > 0
    torch.testing.assert_close(f_auto.norm(dim=1), torch.ones(len(y)))
    assert not torch.allclose(f_auto, f_gap, atol=1e-4)
    with torch.no_grad():
        x = next(iter(dm.test_loader()))[0]
        a, z = m.eval().encode(x)
        torch.testing.assert_close(f_gap[: len(x)], F.normalize(z, dim=1))
        torch.testing.assert_close(f_auto[: len(x)], F.normalize(m.regularizers[0].embed(m, a, z), dim=1))
