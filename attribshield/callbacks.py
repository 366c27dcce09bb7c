"""skorch callbacks of attribshield.

* :class:`BatchLRScheduler`: skorch's ``LRScheduler`` for schedules stepped every batch
  (one-cycle, cyclic), resuming at the right step after ``load_params``.
* :func:`one_cycle`: the one-cycle schedule of the standard fast adversarial training recipe.
* :class:`RobustnessMonitor`: clean, FGSM and PGD accuracy on a fixed set of images after every
  epoch, the curves that reveal catastrophic overfitting; :func:`catastrophic_overfitting`
  reads them from a history and says whether and when the collapse happened.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from skorch.callbacks import Callback, LRScheduler

from ._params import Integral, Real, check_param, validate_params
from ._validation import check_images, check_labels
from .attacks import FGSM, PGD
from .evaluation import clean_accuracy, robust_accuracy

__all__ = ["BatchLRScheduler", "one_cycle", "RobustnessMonitor", "catastrophic_overfitting"]


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
    check_param("one_cycle", "epochs", epochs, [Integral(1, None)])
    check_param("one_cycle", "steps_per_epoch", steps_per_epoch, [None, Integral(1, None)])
    check_param("one_cycle", "max_lr", max_lr, [Real(0, None, closed="neither")])
    epochs = int(epochs)  # NumPy integers pass the check; OneCycleLR wants Python ints
    steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
    total = None if steps_per_epoch is None else epochs * steps_per_epoch
    return BatchLRScheduler(torch.optim.lr_scheduler.OneCycleLR, max_lr=float(max_lr), epochs=epochs,
                            steps_per_epoch=steps_per_epoch, total_steps=total, pct_start=pct_start,
                            anneal_strategy="linear", cycle_momentum=False, div_factor=25.0,
                            final_div_factor=1e4)


class RobustnessMonitor(Callback):
    """Clean, FGSM and PGD accuracy of the net on a fixed set of images after every epoch.

    The curves that reveal *catastrophic overfitting* of single-step adversarial training
    (Wong, Rice and Kolter, 2020): within an epoch or two, the accuracy under PGD falls to
    about 0 while the accuracy under FGSM (the attack the model trains against) jumps up.
    Watching them on a few hundred *training* images costs a fraction of an epoch and needs
    no held-out data; :func:`catastrophic_overfitting` reads them back from the history.

    At the end of every epoch the net's module is evaluated (in eval mode; every submodule's
    training flag is restored after, and parameter ``.grad`` fields are not touched) on the
    same ``n`` images, and three values in [0, 1] are recorded in the epoch's history row:

    * ``<name_prefix>_clean_acc``: accuracy on the images;
    * ``<name_prefix>_fgsm_acc``: accuracy under FGSM (no random start, one step of ``eps``);
    * ``<name_prefix>_pgd_acc``: accuracy under PGD-``pgd_steps`` (a random start, steps of
      ``2.5 * eps / pgd_steps``);

    plus ``<name_prefix>_dur``, the seconds the evaluation took.  Attacks are Linf and only
    attack the images the model classifies correctly (as
    :func:`~attribshield.evaluation.robust_accuracy` does), so
    ``pgd_acc <= clean_acc`` and ``fgsm_acc <= clean_acc``.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1] (or ``uint8`` in 0..255), typically training images.  Only the
        monitored subset is validated and converted (to float32, on the CPU).
    y : array-like of shape (N,)
        Their labels (the net's class labels; encoded with ``net.encode_labels`` when the net
        has it).
    eps : float >= 0
        Linf radius of both attacks (e.g. 8/255).
    pgd_steps : int >= 1, default=10
        PGD iterations.
    n : int >= 1, default=512
        Images evaluated: a fixed subset of ``X`` drawn once (all of ``X`` when it holds at
        most ``n``).
    batch_size : int >= 1, default=256
        Images per forward/backward pass.
    name_prefix : str, default="monitor"
        Prefix of the history keys (non-empty, no ``"__"``).
    random_state : int >= 0 or None, default=0
        Seeds the choice of the subset (``None``: the first ``n`` images) and PGD's random
        start, which is the same at every epoch, so the curves compare like with like
        (``None``: torch's global generator).

    Attributes
    ----------
    X_ : torch.Tensor of shape (n, C, H, W), float32
        The monitored images (CPU), set by :meth:`initialize`.
    y_ : torch.Tensor of shape (n,), int64
        Their labels.
    indices_ : numpy.ndarray of shape (n,)
        Their positions in ``X``.

    Raises
    ------
    ValueError
        From :meth:`initialize` (called by ``net.initialize()``, before any training): bad
        images or labels (wrong shape, values outside [0, 1], mismatched lengths) or bad
        parameters.

    See Also
    --------
    catastrophic_overfitting : whether (and at which epoch) the PGD accuracy collapsed.
    attribshield.evaluation.robust_accuracy : the accuracy under attack used here.

    Notes
    -----
    Cost per epoch: ``n`` forward passes (clean), ``n`` forward and backward passes (FGSM)
    and ``pgd_steps`` forward and backward passes per correctly classified image (PGD), in
    float32 without the net's autocast.  The evaluation runs with the module in eval mode, so
    BatchNorm uses its running statistics, as at test time.

    References
    ----------
    Wong, Rice and Kolter, "Fast is better than free: revisiting adversarial training",
    ICLR 2020.

    Examples
    --------
    >>> import torch
    >>> from attribshield import RobustAttributionClassifier
    >>> from attribshield.attacks import FGSM
    >>> from attribshield.testing import TinyMLP, make_images
    >>> X, y = make_images(n=24)
    >>> monitor = RobustnessMonitor(X, y, eps=0.05, pgd_steps=3, n=16)
    >>> clf = RobustAttributionClassifier(TinyMLP, attacker=FGSM(eps=0.05, random_start=True),
    ...                                   callbacks=[("monitor", monitor)], max_epochs=2, verbose=0,
    ...                                   random_state=0).fit(X, y)
    >>> [0 <= clf.history[-1, k] <= 1 for k in ("monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc")]
    [True, True, True]
    >>> len(clf.history[:, "monitor_pgd_acc"])
    2
    """

    def __init__(self, X, y, *, eps, pgd_steps=10, n=512, batch_size=256, name_prefix="monitor", random_state=0):
        self.X = X
        self.y = y
        self.eps = eps
        self.pgd_steps = pgd_steps
        self.n = n
        self.batch_size = batch_size
        self.name_prefix = name_prefix
        self.random_state = random_state

    _parameter_constraints = {
        "eps": [Real(0, None)],
        "pgd_steps": [Integral(1, None)],
        "n": [Integral(1, None)],
        "batch_size": [Integral(1, None)],
        "random_state": [None, Integral(0, None)],
    }

    def _validate_params(self) -> None:
        validate_params(self)
        if not isinstance(self.name_prefix, str) or not self.name_prefix or "__" in self.name_prefix:
            raise ValueError(f"name_prefix must be a non-empty string without '__', got {self.name_prefix!r}")

    def initialize(self):
        """Validate the parameters and the data, and draw the monitored subset.

        Returns
        -------
        self
        """
        self._validate_params()
        X = self.X if isinstance(self.X, (torch.Tensor, np.ndarray)) else np.asarray(self.X)
        if X.ndim == 0 or len(X) == 0:
            raise ValueError(f"X must be a non-empty batch of images (N, C, H, W), got shape {tuple(X.shape)}")
        n_total = len(X)
        y = check_labels(self.y, n_total)
        n = min(int(self.n), n_total)
        if n == n_total or self.random_state is None:
            idx = np.arange(n)
        else:
            idx = np.sort(np.random.default_rng(int(self.random_state)).choice(n_total, size=n, replace=False))
        # only the subset is converted (a 10,000-image uint8 set need not become float)
        part = X[torch.as_tensor(idx, device=X.device)] if isinstance(X, torch.Tensor) else X[idx]
        self.indices_ = idx
        self.X_ = check_images(part).detach().float().cpu()
        self.y_ = y[torch.as_tensor(idx)].cpu()
        return self

    def keys(self) -> tuple:
        """The history keys this callback records: clean, FGSM, PGD accuracy and duration.

        Returns
        -------
        tuple of str
        """
        p = self.name_prefix
        return (f"{p}_clean_acc", f"{p}_fgsm_acc", f"{p}_pgd_acc", f"{p}_dur")

    def evaluate(self, module) -> dict:
        """Clean, FGSM and PGD accuracy of ``module`` on the monitored images.

        Parameters
        ----------
        module : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits.  Its labels must be the encoded ones (``0..K-1``).

        Returns
        -------
        dict
            ``{"clean_acc", "fgsm_acc", "pgd_acc"}``, floats in [0, 1].
        """
        if getattr(self, "X_", None) is None:
            self.initialize()
        return self._evaluate(module, self.y_)

    def _evaluate(self, module, y) -> dict:
        module_ = module if isinstance(module, torch.nn.Module) else module.module_
        device = next((t.device for t in module_.parameters()), self.X_.device)
        X, y = self.X_.to(device), torch.as_tensor(y).to(device)
        eps, bs = float(self.eps), int(self.batch_size)
        fgsm = FGSM(eps=eps, random_start=False)
        pgd = PGD(eps=eps, steps=int(self.pgd_steps), random_start=True, random_state=self.random_state)
        return {
            "clean_acc": clean_accuracy(module_, X, y, batch_size=bs),
            "fgsm_acc": robust_accuracy(module_, X, y, fgsm, batch_size=bs),
            "pgd_acc": robust_accuracy(module_, X, y, pgd, batch_size=bs),
        }

    def on_epoch_end(self, net, **kwargs):
        if getattr(self, "X_", None) is None:
            self.initialize()
        t0 = time.perf_counter()
        y = self.y_
        encode = getattr(net, "encode_labels", None)
        if callable(encode):
            y = encode(y)
        res = self._evaluate(net.module_, y)
        k_clean, k_fgsm, k_pgd, k_dur = self.keys()
        net.history.record(k_clean, res["clean_acc"])
        net.history.record(k_fgsm, res["fgsm_acc"])
        net.history.record(k_pgd, res["pgd_acc"])
        net.history.record(k_dur, time.perf_counter() - t0)

    def __getstate__(self):
        state = self.__dict__.copy()
        # the subset is rebuilt from X by initialize(); no need to pickle it twice
        for key in ("X_", "y_", "indices_"):
            state.pop(key, None)
        return state


def catastrophic_overfitting(history, prefix="monitor", drop=0.3, gap=None) -> dict:
    """Did the PGD accuracy recorded by :class:`RobustnessMonitor` collapse, and when?

    The rule, applied epoch by epoch to the rows that hold both ``<prefix>_pgd_acc`` (``p``)
    and ``<prefix>_fgsm_acc`` (``f``): the run *collapsed* at the first epoch ``t`` where

    * ``max(p_1, ..., p_t) - p_t >= drop`` (the PGD accuracy fell by at least ``drop`` from
      its best so far), **and**
    * ``f_t - p_t >= gap`` (the FGSM accuracy stays at least ``gap`` above it).

    The second condition separates catastrophic overfitting (the model defeats its own
    single-step attack while multi-step attacks succeed: gradient masking) from a plain loss
    of robustness, where both accuracies fall together.  With the defaults a run whose PGD
    accuracy went from 0.35 to 0.02 while the FGSM accuracy rose to 0.8 has collapsed; one
    whose PGD and FGSM accuracies fell together from 0.4 and 0.5 to 0.05 and 0.1 has not.

    Parameters
    ----------
    history : skorch.History or sequence of dict
        The net's history (``net.history``) or its JSON form (a list of epoch dicts, as
        skorch's ``Checkpoint`` writes ``history.json``).  Rows without both keys are
        skipped (epochs before the monitor was added).
    prefix : str, default="monitor"
        The monitor's ``name_prefix``.
    drop : float in (0, 1], default=0.3
        Fall of the PGD accuracy from its best that counts as a collapse.
    gap : float in [0, 1] or None, default=None
        Required lead of the FGSM accuracy over the PGD accuracy at the collapse; ``None``
        means ``drop``.

    Returns
    -------
    dict
        ``collapsed`` (bool); ``epoch``: the epoch of the collapse (the history's ``epoch``
        number, 1-based, or the row's position + 1), ``None`` without a collapse;
        ``pgd_best`` and ``pgd_best_epoch``: the best PGD accuracy before (or without) the
        collapse and its epoch; ``pgd_at_collapse`` and ``fgsm_at_collapse`` (``None``
        without a collapse); ``pgd_final`` and ``fgsm_final``: the last epoch's values;
        ``n_epochs``: rows read.

    Raises
    ------
    ValueError
        ``history`` is not a sequence of dicts or holds no row with both keys; ``drop`` or
        ``gap`` out of range.

    Examples
    --------
    >>> rows = [{"epoch": 1, "monitor_pgd_acc": 0.30, "monitor_fgsm_acc": 0.40},
    ...         {"epoch": 2, "monitor_pgd_acc": 0.36, "monitor_fgsm_acc": 0.45},
    ...         {"epoch": 3, "monitor_pgd_acc": 0.01, "monitor_fgsm_acc": 0.85}]
    >>> res = catastrophic_overfitting(rows)
    >>> res["collapsed"], res["epoch"], res["pgd_best"]
    (True, 3, 0.36)
    >>> catastrophic_overfitting(rows[:2])["collapsed"]
    False
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    check_param("catastrophic_overfitting", "drop", drop, [Real(0, 1, closed="right")])
    check_param("catastrophic_overfitting", "gap", gap, [None, Real(0, 1)])
    if gap is None:
        gap = drop
    try:
        rows = list(history)
    except TypeError:
        raise ValueError(f"history must be a skorch History or a sequence of dicts, got {type(history).__name__}") \
            from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("history must be a skorch History or a sequence of dicts (one per epoch)")
    k_pgd, k_fgsm = f"{prefix}_pgd_acc", f"{prefix}_fgsm_acc"
    series = [(int(r.get("epoch", i + 1)), float(r[k_pgd]), float(r[k_fgsm]))
              for i, r in enumerate(rows) if r.get(k_pgd) is not None and r.get(k_fgsm) is not None]
    if not series:
        raise ValueError(f"history holds no epoch with both {k_pgd!r} and {k_fgsm!r}: was a "
                         f"RobustnessMonitor(name_prefix={prefix!r}) among the net's callbacks?")
    best, best_epoch = -math.inf, None
    out = {"collapsed": False, "epoch": None, "pgd_at_collapse": None, "fgsm_at_collapse": None}
    for epoch, p, f in series:
        if p > best:
            best, best_epoch = p, epoch
        if best - p >= drop - 1e-12 and f - p >= gap - 1e-12:
            out.update(collapsed=True, epoch=epoch, pgd_at_collapse=p, fgsm_at_collapse=f)
            break
    out.update(pgd_best=best, pgd_best_epoch=best_epoch, pgd_final=series[-1][1], fgsm_final=series[-1][2],
               n_epochs=len(series))
    return out
