"""Training progress as the methods and regularizers read it: steps taken and epochs elapsed.

Lightning's ``global_step`` counts every optimizer's step, so it runs twice as fast when a regularizer brings
its own optimizer (SYN's decoder uses Adam). The count here is Lightning's batch progress, which checkpoints
save and a resume restores; :func:`epochs_done` is the one source of any schedule driven by training progress
(SYN's nu).
"""

from __future__ import annotations


def train_steps(trainer) -> int:
    """Training steps (batches trained) so far, the current one included once its step is done."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


def epoch_fraction(trainer, batch_idx: int) -> float:
    """How much of the current epoch is done at the *end* of batch ``batch_idx`` (1.0 when unknown)."""
    nb = trainer.num_training_batches if trainer is not None else None
    return (batch_idx + 1) / nb if isinstance(nb, int) and nb > 0 else 1.0
