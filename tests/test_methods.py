"""MoCo v2 queue and EMA, optimizer groups and schedule, SimSiam's collapse indicator,
local backbone weights (nothing downloaded)."""

from __future__ import annotations

import math
import urllib.request
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import compose_cfg, queue
from fgssl.errors import FgsslError
from fgssl.factory import build_model as build_method
from fgssl.methods.mocov2 import default_queue_size
from fgssl.methods.optim import warmup_cosine
from fgssl.methods.simsiam import collapse_indicator
from fgssl.nets.backbones import build_backbone
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def _moco(*overrides: str):
    torch.manual_seed(0)
    cfg = compose_cfg(["method=mocov2", "method.queue_size=8", "data.image_size=32", *overrides])
    return build_method(cfg)


def _images(n=4, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


# ---------------------------------------------------------------------- MoCo queue
def test_queue_pointer_and_wrap_around():
    m = _moco()
    k = m.queue.shape[0]
    assert k == 8 and int(m.queue_ptr) == 0
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(k)), "initial queue is L2-normalised"
    keys = [F.normalize(torch.randn(3, m.queue.shape[1]), dim=1) for _ in range(3)]
    before = m.queue.clone()
    m.enqueue(keys[0])
    assert int(m.queue_ptr) == 3
    assert torch.equal(m.queue[0:3], keys[0])
    assert torch.equal(m.queue[3:], before[3:])
    m.enqueue(keys[1])
    assert int(m.queue_ptr) == 6
    assert torch.equal(m.queue[3:6], keys[1])
    m.enqueue(keys[2])  # rows 6, 7 then wrap to 0
    assert int(m.queue_ptr) == 1
    assert torch.equal(m.queue[6], keys[2][0]) and torch.equal(m.queue[7], keys[2][1])
    assert torch.equal(m.queue[0], keys[2][2])
    assert torch.equal(m.queue[1:3], keys[0][1:3]), "rows not reached yet are kept"


def test_real_step_enqueues_its_keys_and_ssl_loss_does_not():
    m = _moco()
    m.train()
    x1, x2 = _images(4, 1), _images(4, 2)
    q0, p0 = m.queue.clone(), int(m.queue_ptr)
    # synthetic pairs (SYN) go through ssl_loss: the queue must not move
    for _ in range(3):
        loss = m.ssl_loss(x1, x2)
        assert torch.isfinite(loss)
    assert torch.equal(m.queue, q0) and int(m.queue_ptr) == p0
    # the real step enqueues the key of view 2 (momentum encoder)
    _, z1 = m.encode(x1)
    _, z2 = m.encode(x2)
    out = m.fp32(m.ssl_forward, x1, x2, z1, z2)
    assert torch.equal(m.queue, q0), "the objective itself never writes the queue"
    m.on_real_step(out)
    assert int(m.queue_ptr) == 4
    assert torch.equal(m.queue[:4], out.keys)
    assert torch.allclose(m.queue[:4], m.keys(x2), atol=1e-5)
    assert torch.equal(m.queue[4:], q0[4:])


def test_moco_loss_by_hand():
    """Symmetrised InfoNCE with T from the config, computed with loops over the queue."""
    for symmetric in (True, False):
        m = _moco("method.temperature=0.5", f"method.symmetric={str(symmetric).lower()}")
        m.train()
        x1, x2 = _images(3, 3), _images(3, 4)
        _, z1 = m.encode(x1)
        _, z2 = m.encode(x2)
        out = m.fp32(m.ssl_forward, x1, x2, z1, z2)
        with torch.no_grad():
            q1 = F.normalize(m.projector(z1), dim=1).tolist()
            q2 = F.normalize(m.projector(z2), dim=1).tolist()
            k1, k2 = m.keys(x1).tolist(), m.keys(x2).tolist()
        queue = m.queue.tolist()

        def nce(q, k, queue=queue):
            tot = 0.0
            for qi, ki in zip(q, k):
                pos = math.exp(sum(a * b for a, b in zip(qi, ki)) / 0.5)
                neg = sum(math.exp(sum(a * b for a, b in zip(qi, n)) / 0.5) for n in queue)
                tot -= math.log(pos / (pos + neg))
            return tot / len(q)

        want = 0.5 * (nce(q1, k2) + nce(q2, k1)) if symmetric else nce(q1, k2)
        assert out.loss.item() == pytest.approx(want, rel=1e-4)


def test_default_queue_size():
    assert default_queue_size(100, 32) == 96  # largest multiple of 32 <= 100: one epoch of keys
    assert default_queue_size(2190, 64) == 2176
    assert default_queue_size(10**6, 256) == 65536  # capped
    assert default_queue_size(5, 16) == 16  # never below one global batch


# ---------------------------------------------------------------------- EMA
def test_ema_update_of_momentum_pairs():
    m = _moco("method.ema_momentum=0.9")
    pairs = m.momentum_pairs()
    assert [type(o).__name__ for o, _ in pairs] == ["ResNetBackbone", "MoCoV2Projector"]
    for online, target in pairs:
        for po, pt in zip(online.parameters(), target.parameters()):
            assert torch.equal(po, pt), "the key encoder starts as a copy"
            assert not pt.requires_grad
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.projector.parameters()):
            p.add_(torch.randn_like(p))
        m.backbone.bn1.running_mean.add_(3.0)
    old_t = [[p.clone() for p in t.parameters()] for _, t in pairs]
    new_o = [[p.clone() for p in o.parameters()] for o, _ in pairs]
    m.update_momentum()
    for (online, target), ot, no in zip(pairs, old_t, new_o):
        for pt, a, b in zip(target.parameters(), ot, no):
            assert torch.allclose(pt, 0.9 * a + 0.1 * b, atol=1e-6)
        for bo, bt in zip(online.buffers(), target.buffers()):
            assert torch.equal(bo, bt), "buffers (BN statistics) are copied"
    assert torch.equal(m.backbone_momentum.bn1.running_mean, m.backbone.bn1.running_mean)


# ---------------------------------------------------------------------- param groups / schedule
def _attach_stub_trainer(method, total=20, epochs=4):
    method.trainer = SimpleNamespace(world_size=1, estimated_stepping_batches=total, max_epochs=epochs, datamodule=None)


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_param_groups_cover_every_trainable_param_once(name):
    torch.manual_seed(0)
    cfg = compose_cfg([f"method={name}", *queue(name, 8)])
    m = build_method(cfg)
    from fgssl.methods.optim import all_param_groups

    groups = all_param_groups(m)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    names = [g["name"] for g in groups]
    assert names[:2] == ["backbone", "projector"]
    if name == "simsiam":
        assert names == ["backbone", "projector", "predictor"]
        assert groups[2]["fixed_lr"] is True
    else:
        assert not any(id(p) in set(ids) for p in m.backbone_momentum.parameters())


def test_simsiam_fixed_predictor_lr_and_warmup_cosine():
    torch.manual_seed(0)
    cfg = compose_cfg(["method=simsiam", "method.lr=0.08", "data.batch_size=32", "method.warmup_epochs=0.4",
                       "method.weight_decay=0.001"])
    m = build_method(cfg)
    total, epochs = 20, 4
    _attach_stub_trainer(m, total, epochs)
    (opts, scheds) = m.configure_optimizers()
    assert len(opts) == 1 and len(scheds) == 1
    opt, sched = opts[0], scheds[0]["scheduler"]
    assert scheds[0]["interval"] == "step"
    base = 0.08 * 32 / 256  # lr per 256 images, scaled
    warm = round(0.4 * total / epochs)  # 2 steps
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"backbone", "projector", "predictor"}
    assert all(g["weight_decay"] == 0.001 for g in opt.param_groups)
    assert opt.defaults["momentum"] == 0.9

    def expected(s):  # linear warm-up, then half cosine to 0 at `total`
        if s < warm:
            return base * (s + 1) / warm
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (total - warm))))

    seen = []
    for s in range(8):
        assert by_name["predictor"]["lr"] == pytest.approx(base), f"predictor lr moved at step {s}"
        for g in ("backbone", "projector"):
            assert by_name[g]["lr"] == pytest.approx(expected(s), rel=1e-9, abs=1e-12), (g, s)
        seen.append(by_name["backbone"]["lr"])
        opt.step()
        sched.step()
    assert seen[1] == pytest.approx(base) and seen[0] == pytest.approx(base / 2)
    assert seen[-1] < seen[2], "the cosine decays after warm-up"

    # without the flag the predictor follows the schedule too
    cfg.method.fixed_pred_lr = False
    m2 = build_method(cfg)
    _attach_stub_trainer(m2, total, epochs)
    opt2 = m2.configure_optimizers()[0][0]
    assert {g["name"]: g["lr"] for g in opt2.param_groups}["predictor"] == pytest.approx(base / 2)


def test_warmup_cosine_values():
    assert warmup_cosine(0, 10, 0) == pytest.approx(1.0)
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 10, 4) == pytest.approx(0.25)
    assert warmup_cosine(3, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(4, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(7, 10, 4) == pytest.approx(0.5)


# ---------------------------------------------------------------------- collapse indicator
def test_collapse_indicator():
    torch.manual_seed(0)
    for d in (64, 256, 2048):
        z = torch.randn(4096, d)
        assert collapse_indicator(z).item() == pytest.approx(1 / math.sqrt(d), rel=0.03), d
    const = torch.full((512, 256), 3.0)
    assert collapse_indicator(const).item() == pytest.approx(0.0, abs=1e-6)
    # all outputs along one direction (any scale): collapsed too
    v = torch.randn(1, 256)
    scaled = torch.rand(512, 1) * 5 + 0.5
    assert collapse_indicator(scaled * v).item() == pytest.approx(0.0, abs=1e-6)


def test_simsiam_logs_collapse_indicator():
    torch.manual_seed(0)
    m = build_method(compose_cfg(["method=simsiam", "method.proj_dim=64", "method.proj_hidden=64",
                                  "method.pred_hidden=16"]))
    m.train()
    x1, x2 = _images(8, 5), _images(8, 6)
    _, z1 = m.encode(x1)
    _, z2 = m.encode(x2)
    out = m.fp32(m.ssl_forward, x1, x2, z1, z2)
    assert set(out.logs) == {"collapse_std"}
    c = out.logs["collapse_std"].item()
    assert 0.0 < c <= 1 / math.sqrt(64) * 1.5
    assert -1.0 <= out.loss.item() <= 1.0
    assert out.keys is None


# ---------------------------------------------------------------------- local weights
@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Any attempt to download fails loudly; torch's cache dir is an empty tmp folder."""
    def boom(*a, **k):
        raise AssertionError(f"fgssl tried to download: {a} {k}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


@pytest.fixture(scope="module")
def r18_state(tmp_path_factory):
    torch.manual_seed(123)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-local.pth"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("name", ["mocov2", "simsiam"])
def test_backbone_weights_load_local_state_dict(name, r18_state, no_download):
    path, sd = r18_state
    cfg = compose_cfg([f"method={name}", *queue(name, 8), f"backbone.weights={path}"])
    m = build_method(cfg)
    own = m.backbone.state_dict()
    assert set(own) == set(sd) - {"fc.weight", "fc.bias"}
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k
    if name == "mocov2":  # the key encoder starts from the same weights
        assert torch.equal(m.backbone_momentum.conv1.weight, sd["conv1.weight"])
    assert not no_download.exists() or not any(no_download.rglob("*"))


def test_backbone_weights_wrapped_and_prefixed(r18_state, no_download, tmp_path):
    path, sd = r18_state
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    net = build_backbone("resnet18", weights=str(wrapped))
    assert torch.equal(net.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


def test_backbone_weights_mismatch_lists_keys(r18_state, no_download, tmp_path):
    _, sd = r18_state
    bad = dict(sd)
    del bad["layer4.1.bn2.running_var"]
    del bad["layer2.0.conv1.weight"]
    bad["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(FgsslError) as ei:
        build_method(compose_cfg(["method=mocov2", "method.queue_size=8", f"backbone.weights={path}"]))
    msg = str(ei.value)
    assert str(path) in msg
    assert "missing keys" in msg and "layer4.1.bn2.running_var" in msg and "layer2.0.conv1.weight" in msg
    assert "unexpected keys" in msg and "layer5.0.conv1.weight" in msg
    # right keys, wrong shape (e.g. a checkpoint of the small stem): the key is named
    shaped = dict(sd)
    shaped["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(shaped, path)
    with pytest.raises(FgsslError, match=r"conv1\.weight"):
        build_backbone("resnet18", weights=str(path))
    with pytest.raises(FgsslError, match="file not found"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FgsslError, match="junk.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "junk.pth"))


def test_random_init_downloads_nothing(no_download):
    for name in ("resnet18", "resnet50"):
        net = build_backbone(name)
        assert net.dim == (512 if name == "resnet18" else 2048)
    a, z = build_backbone("resnet18", stem="small")(torch.randn(2, 3, 32, 32))
    assert a.shape == (2, 512, 4, 4) and torch.allclose(z, a.mean(dim=(2, 3)))
    assert not no_download.exists()
