"""Feature extraction through the method's ``embed`` hook."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(method, loader: DataLoader, device: torch.device, feature: str = "auto",
                     desc: str = "features", progress: bool = True) -> Tuple[Tensor, Tensor]:
    """Return (features (N, C) L2-normalised, labels (N,)) on ``device``."""
    method.eval()
    feats, labels = [], []
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for x, y in it:
        feats.append(method.embed(x.to(device, non_blocking=True), feature))
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)
