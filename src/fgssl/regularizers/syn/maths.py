"""SYN's maths: the nu schedule, the running dimension statistics, the selection of non-discriminative
dimensions and their perturbation (items 1, 3, 4 and 6 of :mod:`fgssl.regularizers.syn.regularizer`, which
holds the equations and the step that uses them)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fgssl.errors import ConfigError

CRITERIA = ("variance", "gradcam", "both", "union", "intersection", "random", "top")
#: Criteria that read the Grad-CAM importance (the base then computes dL_C/dA).
CAM_CRITERIA = ("gradcam", "both", "union", "intersection", "top")
PERTURBATIONS = ("shuffle", "gauss", "gauss_dim", "zero", "mean")


# ----------------------------------------------------------------------------- schedule
def nu_schedule(nu: float, warmup_epochs: float, ramp_epochs: float, epoch: int, frac: float = 1.0) -> float:
    """``nu(t)``: 0 before ``warmup_epochs``, then linear to ``nu`` over ``ramp_epochs``.

    ``t = epoch + frac`` is the training progress *at the end* of the current step
    (``frac = (batch_idx + 1) / batches_per_epoch``), so the first step after the
    warm-up already has a small positive weight and the ramp reaches ``nu`` exactly
    at the end of epoch ``warmup + ramp - 1``.
    """
    if epoch < warmup_epochs:
        return 0.0
    if ramp_epochs <= 0:
        return float(nu)
    t = (epoch - warmup_epochs) + frac
    return float(nu) * min(1.0, max(0.0, t / ramp_epochs))


# ----------------------------------------------------------------------------- statistics
def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class DimensionStats(nn.Module):
    """Running per-dimension mean and variance of ``z`` (item 1 of the module docstring).

    Buffers: ``mean`` (C), ``var`` (C), ``num_updates`` (0 = not initialised).
    """

    def __init__(self, dim: int, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"synthesis.stats_momentum={momentum} must be in [0, 1)")
        self.momentum = float(momentum)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def initialised(self) -> bool:
        return int(self.num_updates) > 0

    @staticmethod
    def local_moments(z: Tensor) -> Tensor:
        """``[sum_i z_i, sum_i z_i^2, n]`` in fp64, packed in one (2C + 1) vector."""
        z = z.detach().double()
        n = torch.full((1,), float(z.shape[0]), dtype=torch.float64, device=z.device)
        return torch.cat([z.sum(0), z.square().sum(0), n])

    @staticmethod
    def moments_to_mean_var(m: Tensor) -> Tuple[Tensor, Tensor]:
        c = (m.numel() - 1) // 2
        n = m[-1].clamp_min(1.0)
        mean = m[:c] / n
        var = (m[c:2 * c] / n - mean.square()).clamp_min(0.0)
        return mean, var

    @torch.no_grad()
    def global_moments(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean and (population) variance of ``z`` over the global batch (all ranks)."""
        return self.moments_to_mean_var(_all_reduce_sum(self.local_moments(z)))

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """One EMA step with the global batch moments of ``z`` (N, C)."""
        mean, var = self.global_moments(z)
        # keep = m, or 0 on the first update (copy the batch moments); no host-device sync.
        keep = (self.num_updates > 0).to(self.mean.dtype) * self.momentum
        self.mean.mul_(keep).add_((1.0 - keep) * mean.to(self.mean.dtype))
        self.var.mul_(keep).add_((1.0 - keep) * var.to(self.var.dtype))
        self.num_updates.add_(1)

    @torch.no_grad()
    def set_from_moments(self, local: Tensor) -> None:
        """Set the statistics exactly from accumulated :meth:`local_moments` (all-reduced here)."""
        mean, var = self.moments_to_mean_var(_all_reduce_sum(local.clone()))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.var.copy_(var.to(self.var.dtype))
        self.num_updates.add_(1)


# ----------------------------------------------------------------------------- selection
def ranks(score: Tensor, dim: int = -1) -> Tensor:
    """Rank of every entry along ``dim`` (0 = lowest; ties broken by index), as float."""
    order = torch.argsort(score, dim=dim, stable=True)
    r = torch.empty_like(order)
    r.scatter_(dim, order, torch.arange(score.shape[dim], device=score.device).expand_as(order))
    return r.to(torch.float32)


def bottom_k_mask(score: Tensor, k: int, largest: bool = False) -> Tensor:
    """Boolean (N, C) mask of the ``k`` lowest (or highest) entries of each row (stable order)."""
    n, c = score.shape
    mask = torch.zeros(n, c, dtype=torch.bool, device=score.device)
    if k <= 0:
        return mask
    order = torch.argsort(score, dim=1, stable=True)
    idx = order[:, c - k:] if largest else order[:, :k]
    return mask.scatter_(1, idx, True)


def num_selected(ratio: float, dim: int) -> int:
    """``k = round(rho * C)``."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"synthesis.ratio={ratio} must be in [0, 1]")
    return int(round(ratio * dim))


def select_dims(criterion: str, ratio: float, var: Tensor, cam: Optional[Tensor], n: int,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """The (n, C) mask of dimensions to perturb (item 3 of the module docstring).

    ``var``: running variance (C,); ``cam``: Grad-CAM importance (n, C), needed by
    the criteria in :data:`CAM_CRITERIA`.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"synthesis.criterion={criterion!r} must be one of {CRITERIA}")
    c = var.shape[0]
    k = num_selected(ratio, c)
    if criterion == "random":
        return bottom_k_mask(torch.rand(n, c, device=var.device, generator=generator), k)
    r_var = ranks(var.float()).unsqueeze(0).expand(n, c)
    if criterion == "variance":
        return bottom_k_mask(r_var, k)
    if cam is None:
        raise RuntimeError(f"synthesis.criterion={criterion!r} needs the Grad-CAM gradient (grad_A is None)")
    r_cam = ranks(cam.float(), dim=1)
    if criterion == "gradcam":
        return bottom_k_mask(r_cam, k)
    if criterion == "both":
        return bottom_k_mask(0.5 * (r_var + r_cam), k)
    if criterion == "top":
        return bottom_k_mask(0.5 * (r_var + r_cam), k, largest=True)
    a, b = bottom_k_mask(r_var, k), bottom_k_mask(r_cam, k)
    return a | b if criterion == "union" else a & b


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Mean over rows of the Spearman rank correlation between ``a`` and ``b`` (n, C).

    ``rho = 1 - 6 sum_j d_j^2 / (C (C^2 - 1))`` with ``d`` the rank differences.
    """
    c = a.shape[-1]
    if c < 2:
        return torch.zeros((), device=a.device)
    d = ranks(a.float(), dim=-1) - ranks(b.float(), dim=-1)
    return (1.0 - 6.0 * d.double().square().sum(-1) / (c * (c * c - 1.0))).mean().float()


# ----------------------------------------------------------------------------- perturbation
def derangement(n: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """A random permutation of ``range(n)`` with no fixed point (one random cycle); identity for n < 2."""
    if n < 2:
        return torch.arange(n, device=device)
    p = torch.randperm(n, device=device, generator=generator)
    perm = torch.empty_like(p)
    perm[p] = p.roll(-1)
    return perm


def perturb(z: Tensor, mask: Tensor, kind: str, mean: Optional[Tensor] = None, var: Optional[Tensor] = None,
            beta: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
    """``z~ = where(mask, p(z), z)`` (item 4 of the module docstring); ``z`` is treated as a constant."""
    z = z.detach()
    if kind == "shuffle":
        src = z[derangement(z.shape[0], z.device, generator)]
    elif kind in ("gauss", "gauss_dim"):
        if var is None:
            raise ValueError(f"perturbation={kind} needs the running variance")
        sigma = var.to(z.dtype).clamp_min(0.0).sqrt()
        if kind == "gauss":  # one scale for every dimension: the mean running std sigma-bar
            sigma = sigma.mean()
        eps = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        src = (z + beta * sigma * eps).clamp_min(0.0)
    elif kind == "zero":
        src = torch.zeros_like(z)
    elif kind == "mean":
        if mean is None:
            raise ValueError("perturbation=mean needs the running mean")
        src = mean.to(z.dtype).unsqueeze(0).expand_as(z)
    else:
        raise ConfigError(f"synthesis.perturbation={kind!r} must be one of {PERTURBATIONS}")
    return torch.where(mask, src, z)


@torch.no_grad()
def latent_shift(z: Tensor, z_tilde: Tensor, mask: Tensor) -> Tensor:
    """``||M * (z~ - z)|| / ||M * z||`` over the selected dimensions of the batch (0 if nothing is selected).

    How far the perturbation moves the latent, logged every step as ``train/syn_shift``: a
    perturbation that moves nothing (for example ``gauss_dim`` on near-constant dimensions)
    shows up as a value near 0.
    """
    m = mask.to(z.dtype)
    num = ((z_tilde.detach().float() - z.detach().float()) * m).norm()
    return num / (z.detach().float() * m).norm().clamp_min(1e-12)


def random_hflip(x: Tensor, p: float = 0.5) -> Tensor:
    """Flip each image of the batch horizontally with probability ``p`` (independently)."""
    if p <= 0:
        return x
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
