"""torchvision ResNet backbones that return the layer4 map ``A`` and ``z = GAP(A)``.

Nothing is ever downloaded: ``weights`` must be a local torchvision state_dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

from fgssl.errors import FgsslError

_ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
#: Classifier keys a torchvision checkpoint carries that the backbone does not use.
_HEAD_KEYS = {"fc.weight", "fc.bias"}


class ResNetBackbone(nn.Module):
    """ResNet trunk without its classifier.

    ``forward(x)`` returns ``(A, z)``: the layer4 feature map ``A`` (N, C, h, w)
    and its global average pool ``z`` (N, C). ``dim`` is C (512 for R18,
    2048 for R50).
    """

    def __init__(self, name: str = "resnet18", stem: str = "imagenet", zero_init_residual: bool = False):
        super().__init__()
        if name not in _ARCHS:
            raise FgsslError(f"backbone.name={name!r} is not supported; choose one of {sorted(_ARCHS)}")
        if stem not in ("imagenet", "small"):
            raise FgsslError(f"backbone.stem={stem!r} must be 'imagenet' or 'small'")
        net = _ARCHS[name](weights=None, zero_init_residual=zero_init_residual)
        if stem == "small":
            # CIFAR-style stem: keeps 8x more spatial resolution at layer4 for small images.
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.dim = net.fc.in_features
        net.fc = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def feature_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        a = self.feature_map(x)
        return a, a.mean(dim=(2, 3))


def load_local_weights(backbone: nn.Module, path: str) -> None:
    """Load a local torchvision state_dict into ``backbone``, checking keys strictly.

    Accepts a raw state_dict or a dict holding one under ``state_dict``/``model``;
    a ``module.`` prefix (DataParallel) is stripped, and the classifier keys
    ``fc.weight``/``fc.bias`` are ignored. Any other missing or unexpected key is
    an error that lists them.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FgsslError(f"backbone.weights: file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling problem as one line
        raise FgsslError(f"backbone.weights: cannot read {p} as a torch state_dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise FgsslError(f"backbone.weights: {p} does not hold a state_dict (got {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items() if k.removeprefix("module.") not in _HEAD_KEYS}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise FgsslError(
            f"backbone.weights: {p} does not match the backbone: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
        )
    bad_shape = [k for k in own if own[k].shape != state[k].shape]
    if bad_shape:
        raise FgsslError(
            f"backbone.weights: {p} has wrong shapes for {bad_shape[:10]} "
            f"(e.g. {bad_shape[0]}: file {tuple(state[bad_shape[0]].shape)} vs model {tuple(own[bad_shape[0]].shape)})"
        )
    backbone.load_state_dict(state, strict=True)


def build_backbone(name: str, stem: str = "imagenet", weights: Optional[str] = None,
                   zero_init_residual: bool = False) -> ResNetBackbone:
    net = ResNetBackbone(name, stem, zero_init_residual)
    if weights:
        load_local_weights(net, weights)
    return net


def compile_backbones(method: nn.Module) -> int:
    """``torch.compile`` the ``feature_map`` of every backbone in ``method`` (online and momentum);
    returns how many. Heads, losses and the SYN/LCR modules stay eager (small, shape-varying)."""
    n = 0
    for m in method.modules():
        if isinstance(m, ResNetBackbone) and not getattr(m, "compiled", False):
            m.feature_map = torch.compile(m.feature_map)
            m.compiled = True
            n += 1
    return n
