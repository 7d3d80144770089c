"""The global RNG states in every checkpoint, so a resumed run draws what an uninterrupted one draws."""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import pytorch_lightning as pl
import torch


class RngState(pl.Callback):
    """Saves the global RNG states (torch, CUDA, numpy, python) in every checkpoint and restores them on
    resume, so a resumed run draws the same random numbers (SYN's perturbations, pair choice, ...) as
    an uninterrupted one. Stored as plain tensors and lists: loadable with ``weights_only=True``."""

    def state_dict(self) -> Dict[str, Any]:
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
