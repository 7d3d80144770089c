"""The papers' figures from checkpoints and sweep directories (``python figures.py``).

* ``gradcam.png`` (SYN paper Fig. 3): Grad-CAM of the SSL loss on the same test
  images, one row per checkpoint (``ckpt`` plus ``figures.compare``), e.g. the
  base method, +SYN and +LCR side by side; LCR checkpoints add a row with the
  branch attention.
* ``syn_pairs.png`` (Fig. 4): x, g(z), g(z~) for a SYN checkpoint.
* ``variance.png`` (Fig. 2): for two classes, the distribution of the features
  along the max-variance and the min-variance dimension.
* ``alpha_sweep.png`` (Fig. 5): linear top-1 against alpha from a multirun
  directory (``figures.sweep_dir``), with the base method (synthesis=none) and the
  full method (nu > 0) as reference lines when the sweep contains them.

Each figure is written as a PNG; figures of a checkpoint are also logged to that run's own wandb run
when it was trained with wandb (never to a new one).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fgssl.data.datamodule import FGVRDataModule  # noqa: E402
from fgssl.data.transforms import denormalize  # noqa: E402
from fgssl.errors import FgsslError  # noqa: E402
from fgssl.eval.features import extract_features  # noqa: E402
from fgssl.eval.localisation import lcr_attention, ssl_gradcam  # noqa: E402
from fgssl.fsio import save_figure  # noqa: E402
from fgssl.layout import RunLayout  # noqa: E402
from fgssl.rundir import load_trained  # noqa: E402
from fgssl.runs import read_jobs  # noqa: E402

# ---------------------------------------------------------------------- loading
#: how figures use a trained model: loaders in the main process, no RAM cache (a few images are drawn)
LOAD = {"data.num_workers": 0, "data.cache": False}


def label_of(cfg: DictConfig) -> str:
    from fgssl.factory import labels

    return "+".join([str(cfg.method.name), *labels(cfg)])


def fixed_batch(dm: FGVRDataModule, n: int) -> torch.Tensor:
    """The first ``n`` test images, one per class where possible (same images for every model)."""
    seen, idx = set(), []
    for i, (_, y) in enumerate(dm.test_set.samples):
        if y not in seen:
            seen.add(y)
            idx.append(i)
        if len(idx) == n:
            break
    idx += [i for i in range(len(dm.test_set)) if i not in idx][: n - len(idx)]
    return torch.stack([dm.test_set[i][0] for i in idx])


def _overlay(ax, img: torch.Tensor, heat: Optional[torch.Tensor]) -> None:
    ax.imshow(denormalize(img).permute(1, 2, 0).cpu().numpy())
    if heat is not None:
        h = F.interpolate(heat[None, None].float(), size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        rng = float(h.max() - h.min())
        # a constant map (e.g. a 1x1 layer4 at tiny inputs) carries no location: draw it flat
        h = (h - h.min()) / rng if rng > 1e-6 * (float(h.abs().max()) + 1e-12) else torch.zeros_like(h)
        ax.imshow(h.cpu().numpy(), cmap="jet", alpha=0.45)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------- figures
def fig_gradcam(models: List[Tuple[str, object]], x: torch.Tensor, device: torch.device) -> plt.Figure:
    rows: List[Tuple[str, Optional[torch.Tensor]]] = [("input", None)]
    for name, method in models:
        method = method.to(device)
        rows.append((f"{name}: Grad-CAM", ssl_gradcam(method, x.to(device)).cpu()))
        att = lcr_attention(method, x.to(device))
        if att is not None:
            rows.append((f"{name}: LCR attention", att.cpu()))
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (title, maps) in enumerate(rows):
        for c in range(n):
            _overlay(axes[r][c], x[c], None if maps is None else maps[c])
        axes[r][0].set_ylabel(title, fontsize=7)
    fig.suptitle("Grad-CAM of the SSL loss (image paired with its flip)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_syn_pairs(method, x: torch.Tensor, device: torch.device) -> Optional[plt.Figure]:
    reg = next((r for r in method.regularizers if hasattr(r, "synthesize")), None)
    if reg is None:
        return None
    method = method.to(device)
    with torch.no_grad():
        rec, pert = reg.synthesize(method, x.to(device))
    size = x.shape[-2:]
    rec = F.interpolate(rec.float(), size=size, mode="bilinear", align_corners=False).cpu()
    pert = F.interpolate(pert.float(), size=size, mode="bilinear", align_corners=False).cpu()
    n = x.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for r, (title, imgs) in enumerate((("x", x), ("g(z)", rec), ("g(z~)", pert))):
        for c in range(n):
            _overlay(axes[r][c], imgs[c], None)
        axes[r][0].set_ylabel(title, fontsize=8)
    fig.suptitle("Synthesized pairs: x, g(z), g(perturbed z)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_variance(method, dm: FGVRDataModule, device: torch.device, feature: str = "gap") -> plt.Figure:
    """Two classes along the max- and min-variance dimensions of z (variance over train)."""
    method = method.to(device)
    mem_f, _ = extract_features(_RawZ(method), dm.memory_loader(), device, feature, progress=False)
    te_f, te_y = extract_features(_RawZ(method), dm.test_loader(), device, feature, progress=False)
    var = mem_f.var(dim=0)
    hi, lo = int(var.argmax()), int(var.argmin())
    counts = torch.bincount(te_y)
    c1, c2 = counts.topk(2).indices.tolist()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = dm.classes
    for ax, d, title in ((axes[0], hi, "max-variance dim"), (axes[1], lo, "min-variance dim")):
        for c, color in ((c1, "tab:blue"), (c2, "tab:orange")):
            v = te_f[te_y == c, d].cpu().numpy()
            ax.hist(v, bins=15, alpha=0.6, color=color, label=names[c], density=True)
        ax.set_title(f"{title} (#{d}, var {var[d]:.2e})", fontsize=9)
        ax.set_xlabel("feature value")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


class _RawZ:
    """Adapter: ``embed`` returns the un-normalised z (variances need raw values)."""

    def __init__(self, method):
        self.method = method

    def eval(self):
        self.method.eval()
        return self

    def embed(self, x, feature="gap"):
        return self.method.encode(x)[1]


def collect_sweep(sweep_dir: str, metric: str = "test/linear_top1",
                  method: Optional[str] = None) -> Dict[str, Dict[float, List[float]]]:
    """{'alpha': {alpha: [values]}, 'base': {0: [...]}, 'full': {alpha: [...]}} from a multirun dir,
    for the jobs of one SSL method (``method``, needed when the directory holds several)."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise FgsslError(f"figures.sweep_dir not found: {root}")
    out: Dict[str, Dict[float, List[float]]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for job in read_jobs(root):  # the reader fgssl.results uses too
        if job.config is None or job.error is not None:
            continue
        cfg = OmegaConf.create(job.config)
        seen.add(cfg.method.name)
        if method is not None and cfg.method.name != method:
            continue
        if cfg.get("rationale", {}).get("name", "none") != "none":  # LCR jobs are neither base nor SYN points
            continue
        val = job.metrics.get(metric)
        if val is None:
            continue
        if cfg.synthesis.name == "none":
            out["base"][0.0].append(val)
        elif float(cfg.synthesis.nu) == 0.0:
            out["alpha"][float(cfg.synthesis.alpha)].append(val)
        else:
            out["full"][float(cfg.synthesis.alpha)].append(val)
    if method is None and len(seen) > 1:
        raise FgsslError(f"figures.sweep_dir={root} holds jobs of several methods ({', '.join(sorted(seen))}): "
                         f"choose one with figures.sweep_method=")
    if not out["alpha"] and not out["full"]:
        raise FgsslError(f"no SYN jobs with metrics.json found under {root}"
                         + (f" for method {method}" if method else ""))
    return out


def describe_sweep(data: Dict[str, Dict[float, List[float]]]) -> str:
    """One line saying what ``alpha_sweep.png`` shows (and, when it cannot show an alpha curve, why)."""

    def jobs(key: str) -> str:
        n = sum(len(v) for v in data[key].values())
        at = f" at alpha = {', '.join(f'{a:g}' for a in sorted(data[key]))}" if key != "base" else ""
        return f"{n} job{'s' if n != 1 else ''}{at}"

    parts = [f"{label}: {jobs(key)}" for key, label in (("alpha", "L_C + alpha L_R (nu = 0)"),
                                                         ("base", "base method"), ("full", "full method (nu > 0)"))
             if data[key]]
    text = "alpha_sweep.png: " + "; ".join(parts)
    if not data["alpha"]:
        text += (". No nu = 0 jobs, so there is no L_C + alpha L_R curve (run the sweep with "
                 "experiment=syn_alpha_sweep, which sets nu = 0); the full-method jobs are drawn against alpha")
    return text


def fig_alpha_sweep(sweep_dir: str, metric: str = "test/linear_top1", method: Optional[str] = None) -> plt.Figure:
    data = collect_sweep(sweep_dir, metric, method)
    print(describe_sweep(data))
    fig, ax = plt.subplots(figsize=(5, 3.2))

    def stats(vals):
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return m, s

    # the alpha curve: the nu = 0 jobs; without them (a sweep of the full method) the full-method jobs
    curve, lines = ("alpha", ("base", "full")) if data["alpha"] else ("full", ("base",))
    alphas = sorted(data[curve])
    ms = [stats(data[curve][a]) for a in alphas]
    xs = list(range(len(alphas)))
    ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                label=r"$L_C + \alpha L_R$" if curve == "alpha" else r"full method ($\nu > 0$)")
    ax.set_xticks(xs, [f"{a:g}" for a in alphas])
    for key in lines:
        vals = [v for vs in data[key].values() for v in vs]
        if vals:
            ax.axhline(stats(vals)[0], linestyle="--" if key == "base" else ":",
                       color="gray" if key == "base" else "k", label=f"{key} method")
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(metric.split("/")[-1] + " (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- entry
def make_figures(cfg: DictConfig) -> Dict[str, Path]:
    f = cfg.figures
    if not cfg.ckpt and not f.sweep_dir:
        raise FgsslError("figures.py needs ckpt=PATH (and/or figures.sweep_dir=MULTIRUN_DIR)")
    out_dir = Path(f.out_dir) if f.out_dir else (
        RunLayout(Path(cfg.ckpt).expanduser().resolve().parent.parent).figures if cfg.ckpt else Path(f.sweep_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    figs: Dict[str, plt.Figure] = {}
    if cfg.ckpt:
        main = load_trained(cfg.ckpt, LOAD)
        method, dm, run_cfg = main.model, main.data, main.cfg
        models = [(label_of(t.cfg), t.model) for t in [main, *(load_trained(c, LOAD) for c in f.compare)]]
        x = fixed_batch(dm, f.num_images)
        figs["gradcam"] = fig_gradcam(models, x, device)
        for _, m in models:
            pairs = fig_syn_pairs(m, x, device)
            if pairs is not None:
                figs["syn_pairs"] = pairs
                break
        figs["variance"] = fig_variance(method, dm, device)
    if f.sweep_dir:
        figs["alpha_sweep"] = fig_alpha_sweep(f.sweep_dir, method=f.sweep_method)
    paths = {}
    for name, fig in figs.items():
        p = out_dir / f"{name}.png"
        save_figure(fig, p, dpi=110)  # atomic; a full disk is one clear error (fgssl.fsio)
        plt.close(fig)
        paths[name] = p
        print(f"wrote {p}")
    if cfg.ckpt and cfg.logger.name != "none":
        log_to_run(paths, run_cfg, Path(cfg.ckpt).expanduser().resolve())
    return paths


def log_to_run(paths: Dict[str, Path], run_cfg: DictConfig, ckpt: Path) -> None:
    """Log the figures to the checkpoint's own wandb run (same id, same folder) when that run used wandb;
    a run trained with ``logger=csv`` or ``logger=none`` gets none (``logger=none`` here skips it too)."""
    run = RunLayout(ckpt.parent.parent)  # the folder above checkpoints/
    run_dir, id_file = run.root, run.wandb_id
    if run_cfg.logger.name != "wandb" or not id_file.is_file() or not paths:
        return
    import wandb

    lg = run_cfg.logger
    run = wandb.init(project=lg.project, entity=lg.entity, mode=lg.mode, dir=str(run_dir),
                     id=id_file.read_text().strip(), resume="allow")
    run.log({f"figures/{k}": wandb.Image(str(v)) for k, v in paths.items()})
    run.finish()
    print(f"logged to the run's wandb run {run.id} ({run_dir / 'wandb'})")
