"""Multi-GPU, multi-node and mixed-precision training through Hugging Face ``accelerate``.

:class:`AcceleratedRobustAttributionClassifier` combines skorch's
:class:`skorch.hf.AccelerateMixin` with :class:`~attribshield.RobustAttributionClassifier`.
A plain ``class X(AccelerateMixin, RobustAttributionClassifier)`` trains, but silently drops
the method: the mixin re-implements ``initialize`` without calling the estimator's (no
seeding, no component copies, so no attacker, masker or regularizer) and replaces
``train_step_single`` with plain ``loss = CE(f(x), y)``.  This subclass restores both and
fixes a few smaller wrinkles; see the class's Notes.

Needs ``pip install accelerate`` (the ``accelerate`` extra of attribshield).
"""
from __future__ import annotations

import torch

from .estimator import RobustAttributionClassifier

try:  # pragma: no cover - exercised only without accelerate installed
    from skorch.hf import AccelerateMixin
except ImportError as exc:  # pragma: no cover
    raise ImportError("attribshield.accelerate needs skorch>=0.12 (skorch.hf.AccelerateMixin)") from exc

__all__ = ["AcceleratedRobustAttributionClassifier"]


class AcceleratedRobustAttributionClassifier(AccelerateMixin, RobustAttributionClassifier):
    """:class:`~attribshield.RobustAttributionClassifier` trained through ``accelerate``.

    Data-parallel training on several GPUs or nodes (``accelerate launch``), mixed precision
    (``Accelerator(mixed_precision="bf16")``) and gradient accumulation, with the full method
    (attacker, masker, regularizer, refinement loop) in every training step.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        Maps images ``(N, C, H, W)`` in [0, 1] to logits ``(N, n_classes)``.
    accelerator : accelerate.Accelerator
        Decides the device, the process group, mixed precision and gradient accumulation.
    device : str, torch.device or None, default=None
        ``None`` lets accelerate place the module and the batches (CPU only: the refinement
        loop and :meth:`explain` place tensors on ``device`` themselves).  On a GPU pass
        ``device=accelerator.device``; any other device raises ``ValueError``.
    unwrap_after_train : bool, default=True
        Restore the plain module after ``fit`` (needed to pickle the estimator).
    callbacks__print_log__sink : "auto" or callable, default="auto"
        ``"auto"``: the accelerator's ``print`` (prints on the main process only); with
        ``verbose=0`` nothing is printed.
    **kwargs
        Every :class:`~attribshield.RobustAttributionClassifier` argument (``attacker``,
        ``masker``, ``regularizer``, ``explainer``, ``random_state``, ``max_epochs``, ...).

    Notes
    -----
    What this class changes with respect to ``AccelerateMixin``:

    - ``initialize`` runs the estimator's own initialisation (parameter checks, seeding with
      ``random_state``, ``attacker_``/``masker_``/... copies) and then prepares the module,
      criterion and optimizer with the accelerator.  A re-initialisation (a second ``fit``,
      or the module resized to the number of classes seen in ``y``) prepares the new objects
      again; the mixin alone would keep the unprepared ones.
    - ``train_step_single`` is the estimator's (adversarial / masked / penalised loss) run
      under ``accelerator.autocast()``; the backward pass goes through
      ``accelerator.backward`` when the estimator offers the ``_backward`` hook.  Without that
      hook the estimator calls ``loss.backward()`` itself, which is right for fp32/bf16
      data-parallel training but not for fp16 loss scaling, gradient accumulation or
      DeepSpeed: those configurations raise ``ValueError`` instead of training wrongly.
    - The attacker runs on the unwrapped module: its input-gradient forward passes must not
      go through ``DistributedDataParallel``, whose reducer expects every forward to be
      followed by a parameter backward.
    - Every process runs the refinement rounds on the whole training set (identical models
      and seeded explainers give identical caches); the explanation cost is not divided.

    The estimator pickles after ``fit`` (with ``unwrap_after_train=True``), and
    ``save_params`` / :func:`attribshield.checkpoint.save_checkpoint` save from the main
    process only.

    Examples
    --------
    >>> from accelerate import Accelerator
    >>> from attribshield.attacks import FGSM
    >>> from attribshield.testing import TinyMLP, make_images
    >>> X, y = make_images(n=16)
    >>> clf = AcceleratedRobustAttributionClassifier(
    ...     TinyMLP, accelerator=Accelerator(cpu=True), attacker=FGSM(eps=0.05),
    ...     max_epochs=1, batch_size=8, verbose=0, random_state=0)
    >>> clf.fit(X, y).predict(X[:2]).shape
    (2,)
    """

    def __init__(self, module, *, accelerator, device=None, unwrap_after_train=True,
                 callbacks__print_log__sink="auto", **kwargs):
        super().__init__(module, accelerator=accelerator, device=device, unwrap_after_train=unwrap_after_train,
                         callbacks__print_log__sink=callbacks__print_log__sink, **kwargs)

    # ------------------------------------------------------------------ initialisation
    def _validate_params(self):
        # The mixin demands device=None when accelerate places tensors.  The estimator moves
        # tensors to ``device`` itself (refinement, explain), so allow the accelerator's own
        # device too; only a *different* device is a conflict.
        acc = self.accelerator
        if self.device is not None and acc.device_placement and torch.device(self.device) != acc.device:
            raise ValueError(f"device={self.device!r} differs from the accelerator's device {acc.device}: pass "
                             "device=None (CPU) or device=accelerator.device")
        if self.device is None and acc.device.type != "cpu":
            raise ValueError(f"the accelerator runs on {acc.device}: pass device=accelerator.device (the "
                             "refinement loop and explain() place tensors on the estimator's device)")
        RobustAttributionClassifier._validate_params(self)
        self._check_backward_support()

    def _check_backward_support(self):
        if hasattr(RobustAttributionClassifier, "_backward"):
            return
        acc = self.accelerator
        problems = []
        if getattr(acc, "scaler", None) is not None:
            problems.append("fp16 loss scaling")
        if getattr(acc, "gradient_accumulation_steps", 1) > 1:
            problems.append("gradient accumulation")
        if str(getattr(acc, "distributed_type", "")).upper().endswith("DEEPSPEED"):
            problems.append("DeepSpeed")
        if problems:
            raise ValueError(f"{', '.join(problems)} need(s) accelerator.backward, which this version of "
                             "RobustAttributionClassifier does not route through (no _backward hook); use "
                             "mixed_precision='bf16' or 'no' and gradient_accumulation_steps=1")

    def initialize(self):
        """Initialise the estimator (seed, components), then prepare it with the accelerator."""
        # AccelerateMixin.initialize does not call super().initialize(); run the estimator's
        # (whose super() is NeuralNetClassifier's) and prepare the fresh objects afterwards.
        RobustAttributionClassifier.initialize(self)
        self._wrapped_with_accelerator = False  # the module and optimizer are new objects
        self._initialize_accelerator()
        return self

    def _initialize_callbacks(self):
        if self.callbacks__print_log__sink == "auto" and not self.verbose:
            # PrintLog stays silent with verbose=0 only when its sink is the builtin print
            self.callbacks__print_log__sink = print
        return super()._initialize_callbacks()

    def check_data(self, X, y):
        before = self.__dict__.get("module_")
        super().check_data(X, y)
        if self._wrapped_with_accelerator and self.__dict__.get("module_") is not before:
            # the estimator re-created module/criterion/optimizer (num_classes sized from y)
            self._wrapped_with_accelerator = False
            self._initialize_accelerator()

    # ------------------------------------------------------------------ training
    def train_step_single(self, batch, **fit_params):
        """The estimator's training step under ``accelerator.autocast()``."""
        with self.accelerator.autocast():
            return RobustAttributionClassifier.train_step_single(self, batch, **fit_params)

    def _backward(self, loss):
        """Backward pass through the accelerator (loss scaling, accumulation, DeepSpeed)."""
        self.accelerator.backward(loss)

    def _two_phase(self) -> bool:
        # two backward passes in one step would make DDP reduce (and mark ready) every
        # parameter twice: with several processes the x_adv attribution takes its own pass
        return self.accelerator.num_processes == 1 and super()._two_phase()

    def _perturb(self, module, X, y, sel, want_grad=False):
        return super()._perturb(self.accelerator.unwrap_model(module), X, y, sel, want_grad=want_grad)
