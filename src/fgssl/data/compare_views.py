"""``python -m fgssl.data.compare_views``: both pipelines' views of the same images, side by side.

For a few images of ``data=`` (default: the embedded cub53 test split) and their augmentation seeds, the
workers path (PIL decode + torchvision ``mocov2_view`` under the image's seed) and the device pipeline
(decoded cache + batched views from the same seed) each draw the two MoCo v2 views. The parameters are the
same draws (``fgssl.data.device.view_params``), so the columns should look alike; what differs is the
resampling (an S x S cache cropped by ``roi_align`` vs an antialiased resize of the original) and uint8
rounding. Writes a small PNG (docs/pipeline_views.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch


def views_side_by_side(samples, image_size: int, side: int, seeds: Sequence[int], cache_dir: Optional[Path] = None):
    """Returns (workers views, device views), each (2, n, 3, size, size) normalised."""
    from fgssl.data import device as dp
    from fgssl.data.datamodule import ImageDataset
    from fgssl.data.transforms import TwoViews, mocov2_view

    workers = ImageDataset(samples, TwoViews(mocov2_view(image_size)))
    w = [workers[(i, s)][0] for i, s in enumerate(seeds)]
    w = torch.stack([torch.stack([v[0] for v in w]), torch.stack([v[1] for v in w])])
    split = dp.decoded_cache(samples, side, cache_dir)
    pipe = dp.DevicePipeline(split, image_size, dp.ViewKnobs(), 2**40)
    idx = torch.arange(len(samples))
    params = torch.stack([dp.view_params(s, *pipe.sizes[i].tolist()) for i, s in enumerate(seeds)])
    d1, d2 = pipe.views(idx, params)
    return w, torch.stack([d1, d2])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgssl.data.compare_views", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="cub53")
    p.add_argument("--root", default=None)
    p.add_argument("--n", type=int, default=6, help="images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--side", type=int, default=None, help="cache side (default 2 x image size, as data.cache_size)")
    p.add_argument("--out", default="docs/pipeline_views.png")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgssl.data.readers import read_split
    from fgssl.data.sampling import sample_seed
    from fgssl.data.transforms import denormalize

    test = read_split(a.data, a.root, "test").samples
    pick = torch.linspace(0, len(test) - 1, a.n).round().long().tolist()
    samples = [test[i] for i in pick]
    seeds = [sample_seed(0, 0, i) for i in pick]
    w, d = views_side_by_side(samples, a.image_size, a.side or 2 * a.image_size, seeds)
    cols = [("workers view 1", w[0]), ("device view 1", d[0]), ("workers view 2", w[1]), ("device view 2", d[1])]
    fig, axes = plt.subplots(a.n, 4, figsize=(4 * 1.3, a.n * 1.3), dpi=80)
    for c, (title, x) in enumerate(cols):
        for r in range(a.n):
            ax = axes[r, c]
            ax.imshow(denormalize(x[r]).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{a.data}: the same seed through both pipelines ({a.image_size}px)", fontsize=8)
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    diff = (w - d).abs().mean().item()
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB); mean |workers - device| = {diff:.3f} (normalised units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
