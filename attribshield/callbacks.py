"""skorch callbacks of attribshield.

* :class:`BatchLRScheduler`: skorch's ``LRScheduler`` for schedules stepped every batch
  (one-cycle, cyclic), resuming at the right step after ``load_params``.
* :func:`one_cycle`: the one-cycle schedule of the standard fast adversarial training recipe.
"""
from __future__ import annotations

import math

import torch
from skorch.callbacks import LRScheduler

__all__ = ["BatchLRScheduler", "one_cycle"]


class BatchLRScheduler(LRScheduler):
    """``skorch.callbacks.LRScheduler`` with ``step_every="batch"`` that resumes correctly.

    skorch builds the scheduler with ``last_epoch = len(history) - 1``, the number of
    finished *epochs*; a schedule stepped every *batch* then restarts near its beginning when
    a run resumes from a checkpoint.  This subclass passes the number of batches already
    trained (skorch counts them in ``batch_idx_``), so a resumed run continues the schedule
    where the interrupted one stopped.

    Parameters
    ----------
    policy : torch.optim.lr_scheduler class
        E.g. ``torch.optim.lr_scheduler.OneCycleLR``.
    **kwargs
        Passed to ``policy`` (and to skorch's ``LRScheduler``).
    """

    def __init__(self, policy, event_name="event_lr", **kwargs):
        super().__init__(policy=policy, monitor=None, event_name=event_name, step_every="batch", **kwargs)

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if getattr(self, "steps_per_epoch", "unset") is None and getattr(self, "epochs", None) is not None:
            n = len(X) if X is not None and hasattr(X, "__len__") else None
            if n is None:
                raise ValueError("the one-cycle schedule needs the training-set size: pass steps_per_epoch")
            batch = int(net.batch_size) if net.batch_size not in (None, -1) else n
            self.total_steps = int(self.epochs) * int(math.ceil(n / batch))
        super().on_train_begin(net, X=X, y=y, **kwargs)

    @property
    def kwargs(self):
        # ``epochs`` / ``steps_per_epoch`` size the schedule lazily; the policy gets total_steps
        return {k: v for k, v in super().kwargs.items() if k not in ("epochs", "steps_per_epoch")}

    def _get_scheduler(self, net, policy, **scheduler_kwargs):
        done = int(getattr(self, "batch_idx_", 0) or 0)
        if done > 0:
            # the optimizer's groups carry ``initial_lr`` once a scheduler has run; a
            # checkpoint restores it, and a fresh optimizer gets it from the current lr
            for group in net.optimizer_.param_groups:
                group.setdefault("initial_lr", group["lr"])
        scheduler_kwargs["last_epoch"] = done - 1
        return policy(net.optimizer_, **scheduler_kwargs)


def one_cycle(max_lr: float, epochs: int, steps_per_epoch: int | None = None,
              pct_start: float = 0.4) -> BatchLRScheduler:
    """The triangular one-cycle schedule of "Fast is better than free" (Wong et al., 2020).

    The learning rate rises linearly from ``max_lr / 25`` to ``max_lr`` over the first
    ``pct_start`` of the steps and falls linearly to ``max_lr / 25e4`` at the end; momentum is
    left alone (the recipe keeps SGD's 0.9).

    Parameters
    ----------
    max_lr : float
        Peak learning rate (0.2 for CIFAR-10 in the recipe).
    epochs : int
        Length of the whole run in epochs (a resumed run keeps the full length).
    steps_per_epoch : int or None, default=None
        ``ceil(n_train / batch_size)``; ``None``: computed from the training data when
        training begins.
    pct_start : float, default=0.4
        Share of the steps spent rising (the recipe's 2/5).

    Examples
    --------
    >>> cb = one_cycle(0.2, epochs=10, steps_per_epoch=5)
    >>> lrs = cb.simulate(50, 0.2)
    >>> round(float(lrs.max()), 3), int(lrs.argmax()), bool(lrs[-1] < 1e-3)
    (0.2, 19, True)
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if steps_per_epoch is not None and not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise ValueError(f"steps_per_epoch must be None or an integer >= 1, got {steps_per_epoch!r}")
    if not (isinstance(max_lr, (int, float)) and math.isfinite(max_lr) and max_lr > 0):
        raise ValueError(f"max_lr must be a finite number > 0, got {max_lr!r}")
    total = None if steps_per_epoch is None else epochs * steps_per_epoch
    return BatchLRScheduler(torch.optim.lr_scheduler.OneCycleLR, max_lr=float(max_lr), epochs=epochs,
                            steps_per_epoch=steps_per_epoch, total_steps=total, pct_start=pct_start,
                            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0,
                            final_div_factor=1e4)
