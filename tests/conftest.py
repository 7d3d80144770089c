"""Shared fixtures: Hydra composition of the real conf/ tree, tiny generated datasets."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import List, Optional

import pytest
from omegaconf import DictConfig
from PIL import Image

from fgssl.compose import compose
from fgssl.plugins import setup as register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the device pipeline's decoded caches (data/device.py) go to one temporary directory per test session
# (also for the train.py subprocesses, which inherit the environment); removed at the end
if "FGSSL_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["FGSSL_CACHE_DIR"] = tempfile.mkdtemp(prefix="fgssl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FGSSL_CACHE_DIR"], True)

register_configs()


def compose_cfg(overrides: Optional[List[str]] = None, out_dir: Optional[Path] = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` as train.py would (no Hydra run dir)."""
    return compose(list(overrides or []), CONF, out_dir=out_dir)


def run_training_step(method, x1, x2):
    """The method's real base ``training_step`` with Lightning's trainer plumbing stubbed out (lr 0).

    Returns the loss and the gradients of the backbone parameters.
    """
    import torch

    opt = torch.optim.SGD([{"name": "all", "params": [p for p in method.parameters() if p.requires_grad]}], lr=0.0)
    method.optimizers = lambda: opt
    method.lr_schedulers = lambda: None
    method.manual_backward = lambda loss: loss.backward()
    method.log_dict = lambda *a, **k: None
    method.log = lambda *a, **k: None
    loss = method.training_step(((x1, x2), None), 0)
    return loss, {n: p.grad.clone() for n, p in method.backbone.named_parameters() if p.grad is not None}


def load_base_state(base, other) -> dict:
    """Copy ``base``'s state into ``other`` (same method + regularizers); only regularizer keys may be missing."""
    import copy

    state = copy.deepcopy(base.state_dict())  # queue, key encoder and BN statistics move with each step
    missing, unexpected = other.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(k.startswith("regularizers.") for k in missing)
    return state


def assert_same_step(base, other, x1, x2):
    """One real training step of each gives the identical loss and backbone gradients; returns base's (loss, grads)."""
    import torch

    l0, g0 = run_training_step(base, x1, x2)
    l1, g1 = run_training_step(other, x1, x2)
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], rtol=0, atol=0)
    return l0, g0


def write_image(path: Path, size=(40, 40), mode: str = "RGB", seed: int = 0) -> Path:
    """A small random-texture image; ``mode`` may be RGB, L, RGBA, CMYK, P."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size)
    px = img.load()
    base = [rng.randrange(256) for _ in range(3)]
    for x in range(size[0]):
        for y in range(size[1]):
            px[x, y] = tuple((b + rng.randrange(64) + (x * y) % 32) % 256 for b in base)
    if mode != "RGB":
        img = img.convert(mode)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt)
    return path


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 6, test_per_class: int = 3,
                     size=(40, 40)) -> Path:
    """``root/{train,test}/<class>/*.jpg`` with distinct colours per class."""
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            for i in range(n):
                seed = 1000 * c + i + (split == "test") * 97
                write_image(root / split / f"class_{c}" / f"{i:03d}.jpg", size, seed=seed)
    return root


@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "tinyds")


@pytest.fixture
def cfg_factory(tmp_path: Path):
    """``cfg_factory(*overrides)`` -> composed config writing into a fresh tmp dir."""
    counter = {"n": 0}

    def make(*overrides: str) -> DictConfig:
        counter["n"] += 1
        return compose_cfg(list(overrides), tmp_path / f"run{counter['n']}")

    return make


# ---------------------------------------------------------------------- nothing left on disk
#: not part of the product: caches and environments a test run may create or update
_SNAPSHOT_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".whl", ".ipynb_checkpoints"}


def repo_entries(depth: int = 3) -> set:
    """Paths under the repo down to ``depth`` levels (``outputs/<name>/<run>``), caches left out. New files
    deeper inside a folder that already existed (a run of your own that is still going) are not counted."""
    found = set()

    def walk(d: str, level: int) -> None:
        for e in os.scandir(d):
            if e.name in _SNAPSHOT_SKIP or e.name.endswith(".egg-info"):
                continue
            found.add(os.path.relpath(e.path, ROOT))
            if level < depth and e.is_dir(follow_symlinks=False):
                walk(e.path, level + 1)

    walk(str(ROOT), 1)
    return found


@pytest.fixture(scope="session", autouse=True)
def leaves_nothing_in_the_repo():
    """A passing test run leaves nothing on disk in the repo (no ``outputs/``, ``multirun/``, ``wandb/``, logs):
    every test writes under its tmp_path. Fails the session (an error at teardown) naming what appeared."""
    before = repo_entries()
    yield
    new = sorted(repo_entries() - before)
    assert not new, f"the test run left these in the repo {ROOT}: {new[:20]}"


def queue(method: str, k: int = 64) -> List[str]:
    """``method.queue_size=k`` for MoCo v2 (method configs are per method: SimSiam has no queue)."""
    return [f"method.queue_size={k}"] if method == "mocov2" else []
