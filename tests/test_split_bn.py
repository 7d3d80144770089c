"""Split BatchNorm (shuffle BN on one device) and MoCo v2's shuffled keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from fgssl.errors import FgsslError
from fgssl.nets.split_bn import SplitBatchNorm2d, convert_to_split_bn


def test_split_bn_normalises_each_interleaved_group_by_its_own_statistics():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    split = SplitBatchNorm2d(3, splits=2, momentum=0.1)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        split.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    out = split(x)
    refs = []
    for g in range(2):  # samples g, g + 2, g + 4, ...
        bn = nn.BatchNorm2d(3, momentum=0.1)
        bn.load_state_dict({k: v for k, v in split.state_dict().items() if k != "num_batches_tracked"}, strict=False)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        assert torch.allclose(out[g::2], bn(x[g::2]), atol=1e-5)
        refs.append(bn)
    assert torch.allclose(split.running_mean, (refs[0].running_mean + refs[1].running_mean) / 2, atol=1e-6)
    assert torch.allclose(split.running_var, (refs[0].running_var + refs[1].running_var) / 2, atol=1e-6)
    # one group of the whole batch would differ; eval mode is plain BatchNorm on the running stats
    assert not torch.allclose(out, nn.BatchNorm2d(3)(x), atol=1e-3)
    split.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    assert torch.allclose(split(x), plain(x))


def test_convert_keeps_weights_and_state_dict_keys():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    net[1].weight.data.fill_(0.3)
    keys = set(net.state_dict())
    convert_to_split_bn(net, 4)
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[2][0], SplitBatchNorm2d)
    assert set(net.state_dict()) == keys and torch.all(net[1].weight == 0.3)


def _moco(*extra):
    from fgssl.factory import build_model as build_method

    cfg = compose_cfg(["debug=smoke", "method.queue_size=64", *extra])
    return build_method(cfg)


def test_mocov2_bn_splits_shuffles_keys_and_returns_them_in_order():
    torch.manual_seed(0)
    m = _moco("method.bn_splits=2").train()
    assert isinstance(m.backbone_momentum.bn1, SplitBatchNorm2d)
    x = torch.randn(16, 3, 32, 32)
    perm = m.key_shuffle(16, x.device)
    assert perm is not None and torch.equal(perm, m.key_shuffle(16, x.device))  # (seed, step) decides
    assert not torch.equal(perm, torch.arange(16))
    state = {k: v.clone() for k, v in m.backbone_momentum.state_dict().items()}
    k = m.keys(x)
    # by hand: keys of the shuffled batch, put back in the input's order
    m.backbone_momentum.load_state_dict(state)
    with torch.no_grad():
        a = m.backbone_momentum.feature_map(x[perm])
        ref = torch.nn.functional.normalize(m.projector_momentum(a.mean(dim=(2, 3))), dim=1)[torch.argsort(perm)]
    assert torch.allclose(k, ref, atol=1e-5)
    assert _moco().key_shuffle(16, x.device) is None  # bn_splits=1: no shuffle


@pytest.mark.parametrize("bad", ["0", "5"])
def test_mocov2_bn_splits_must_divide_the_batch(bad):
    # 0: refused by the validation layer when the config is composed; 5: by the method (it does not divide 16)
    why = "must be >= 1" if bad == "0" else "must be >= 1 and divide data.batch_size=16"
    with pytest.raises(FgsslError, match=f"method.bn_splits={bad} {why}"):
        _moco(f"method.bn_splits={bad}")
