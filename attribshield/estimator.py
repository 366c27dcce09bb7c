"""RobustAttributionClassifier: a skorch classifier with pluggable robustness components."""
from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNetClassifier
from skorch.callbacks import PassthroughScoring
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch.utils.data import Dataset

from ._params import Integral, Options, Real, validate_params
from ._validation import as_tensor, check_images, check_labels
from .augment import follow
from .base import capability, check_component, eval_mode
from .dataset import ImageDataset, IndexedDataset
from .explainers import LimeExplainer, fuse_conv_bn
from .explainers._model import refold_conv_bn
from .maskers import pixel_mask
from .refinement import ExplanationAudit, Refinement, segments_for

__all__ = ["RobustAttributionClassifier", "ImageDataset"]

COMPONENTS = ("attacker", "masker", "regularizer", "explainer", "augment")
_AUTOCAST = {None: None, False: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}


class RobustAttributionClassifier(NeuralNetClassifier):
    """Image classifier trained with adversarial augmentation and attribution guidance.

    A skorch :class:`~skorch.NeuralNetClassifier` whose training step composes pluggable
    components: an ``attacker`` (adversarial augmentation), a ``masker`` (hides spurious
    segments found by the ``explainer``), and a ``regularizer`` (penalises input
    sensitivity on those segments).  Every component is optional: with none of them this is
    plain training, with only an attacker it is standard adversarial training.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        Maps images ``(N, C, H, W)`` in [0, 1] to **logits** ``(N, n_classes)``.
        Normalisation belongs inside the module.
    attacker : Attacker or None, default=None
        E.g. :class:`~attribshield.attacks.FGSM` or :class:`~attribshield.attacks.PGD`.
        When set, every batch is attacked and the loss is taken on the adversarial images.
        An attacker with an ``objective(logits_clean, logits_adv, y)`` method (e.g.
        :class:`~attribshield.attacks.TRADES`) supplies the loss itself; ``clean_weight``
        is then ignored.
    masker : Masker or None, default=None
        Selects spurious segments from explanations and fills them (see
        :mod:`attribshield.maskers`).
    regularizer : Regularizer or None, default=None
        Sensitivity penalty on the spurious regions (see :mod:`attribshield.regularizers`).
    explainer : Explainer or None, default=None
        Used by :meth:`explain` and by the refinement loop; ``None`` means
        ``LimeExplainer(n_samples=200, sampling="foldover")``, which matches ``lime``'s
        1,000-sample fidelity at a fifth of the cost (docs/explainers.md).
    augment : callable or None, default=None
        Training-time augmentation of each batch, e.g.
        :class:`~attribshield.augment.RandomCropFlip` (random crop with 4-pixel padding and
        horizontal flips, the standard CIFAR recipe).  Called as ``augment(X) -> (X_aug, src)``
        where ``src`` maps every output pixel to its source pixel, so that cached masks follow
        the images.  Applied to training batches only, before the attack.
    clean_weight : float, default=0.0
        With an attacker, the loss is ``(1 - clean_weight) * CE(f(x_adv), y) +
        clean_weight * CE(f(x), y)``.
    mask_weight : float, default=0.25
        Weight ``alpha`` of the masked-input loss ``CE(f(fill(x, M)), y)``.
    refine_mode : {"rounds", "online"}, default="rounds"
        How the closed loop refreshes the masks.  ``"rounds"``: every ``refine_every`` epochs
        the :class:`~attribshield.refinement.Refinement` callback re-explains a rotating
        ``refine_fraction`` of the training set with the current model and caches the masks
        by sample (the dose of exact LIME).  ``"online"``: the masks of every batch are
        computed in the training step with the current model, so every training image gets a
        fresh mask every epoch (full dose; meant for cheap explainers:
        :class:`~attribshield.explainers.AmortizedLimeExplainer`, which is also trained online,
        and :class:`~attribshield.explainers.GradientExplainer`, which reuses the attack's
        input gradient).
    refine_every : int, default=1
        Re-explain training images every this many epochs (closed loop, ``"rounds"``).
    refine_fraction : float, default=0.05
        Share of the training images re-explained per refinement round (rotating, so every
        image is covered after ``1 / refine_fraction`` rounds).  Explanations dominate the
        method's cost; the default keeps an epoch of the full method within the cost of
        PGD-7 adversarial training on CIFAR-10 (``benchmarks/refinement_cost.py``).
    refine_max_rounds : int >= 1 or None, default=None
        ``"rounds"``: stop refining after this many rounds; ``1`` computes the masks once and
        keeps them (the "no closed loop" ablation).  ``None``: no limit.
    refine_max_age : int >= 1 or None, default=1
        ``"rounds"``: after each round, forget selections made more than this many rounds ago,
        so the training step only uses masks from recent models.  This also bounds the cost:
        the masked loss and the penalty run on the masked share of each batch, which with
        ``1`` stays at ``refine_fraction`` instead of growing every round (``None`` keeps every
        mask: coverage, and cost, grow to 100 %).
    mask_fraction : float in (0, 1], default=1.0
        ``"online"``: share of each batch's rows that get a fresh mask and the masked-input
        loss.
    penalty_fraction : float in [0, 1], default=0.25
        ``"online"``: share of each batch's rows (among the masked ones) that also get the
        regularizer's penalty (a double backward pass: the costliest term).
    explainer_update_fraction : float in [0, 1], default=0.25
        ``"online"`` with a trainable explainer: share of each batch's rows used for its
        ``partial_fit`` step against the current model.
    audit_size : int >= 0, default=128
        ``"online"``: images (a rotating subset of the training set) whose explanations are
        compared with exact LIME after every epoch: the median Spearman correlation and the
        mean top-3 overlap are recorded as ``audit_spearman`` and ``audit_top3`` in the
        history (fidelity is measured, not assumed).  0 disables the audit.
    audit_samples : int >= 2, default=256
        LIME samples per image of the exact reference in the audit (foldover design).
    input_shape : tuple of int or None, default=None
        When set, 2-D inputs ``(N, F)`` are reshaped to ``(N, *input_shape)`` (``-1``
        allowed), so the estimator can follow scikit-learn transformers in a ``Pipeline``.
        ``None``: inputs must already be ``(N, C, H, W)``.
    value_range : tuple of float or None, default=(0.0, 1.0)
        Inputs outside this range are rejected.  ``None`` disables the check (non-image data).
    channels_last : bool, default=False
        Use the channels-last memory format for the module and the inputs (faster
        convolutions on CPUs with AVX-512 and on recent GPUs).
    autocast : {None, "bf16", "fp16"}, default=None
        Mixed-precision autocast for forward passes in training and inference.
    random_state : int or None, default=None
        Seeds torch (module initialisation, shuffling, random starts of components that
        have no seed of their own) when the estimator is initialised.
    criterion : default=torch.nn.CrossEntropyLoss
    optimizer : default=torch.optim.SGD
    train_split : default=None
        No internal validation split by default (it would silently drop 20 % of the data
        in every cross-validation fold); pass ``skorch.dataset.ValidSplit(5)`` for one.
    **kwargs
        Every other :class:`~skorch.NeuralNetClassifier` argument (``lr``, ``max_epochs``,
        ``batch_size``, ``device``, ``callbacks``, ``module__*``, ``optimizer__*``, ...).

    Attributes
    ----------
    module_ : torch.nn.Module
    attacker_, masker_, regularizer_, explainer_ : fitted copies of the components
        (``sklearn.base.clone`` of the constructor arguments).
    classes_ : ndarray
        Class labels seen in ``fit`` (or ``classes``).  Labels are integers; they index
        the module's outputs after encoding to ``0..n_classes-1``.
    history_ : skorch.History

    Notes
    -----
    ``X`` may be a float array or tensor in [0, 1] or a ``uint8`` array in 0..255 (scaled by
    1/255 and kept as ``uint8`` in memory), or a ``torch.utils.data.Dataset`` of ``(x, y)``.
    Bad input (wrong dimensions, NaN/inf, values outside [0, 1], non-integer labels, empty
    data, mismatched lengths) raises ``ValueError`` before training starts.

    Examples
    --------
    >>> from attribshield import RobustAttributionClassifier
    >>> from attribshield.attacks import FGSM
    >>> from attribshield.data import load_digits
    >>> from attribshield.models import DigitsNet
    >>> X, y = load_digits()
    >>> clf = RobustAttributionClassifier(DigitsNet, attacker=FGSM(eps=0.1, random_start=True),
    ...                                   max_epochs=2, lr=0.05, verbose=0, random_state=0)
    >>> clf.fit(X[:200], y[:200]).predict(X[:3]).shape
    (3,)
    """

    def __init__(self, module, *, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD,
                 train_split=None, attacker=None, masker=None, regularizer=None, explainer=None,
                 augment=None, clean_weight=0.0, mask_weight=0.25, refine_mode="rounds", refine_every=1,
                 refine_fraction=0.05, refine_max_rounds=None, refine_max_age=1, mask_fraction=1.0,
                 penalty_fraction=0.25, explainer_update_fraction=0.25,
                 audit_size=128, audit_samples=256,
                 input_shape=None, value_range=(0.0, 1.0), channels_last=False, autocast=None,
                 random_state=None, **kwargs):
        super().__init__(module, criterion=criterion, optimizer=optimizer, train_split=train_split, **kwargs)
        self.attacker = attacker
        self.masker = masker
        self.regularizer = regularizer
        self.explainer = explainer
        self.augment = augment
        self.clean_weight = clean_weight
        self.mask_weight = mask_weight
        self.refine_mode = refine_mode
        self.refine_every = refine_every
        self.refine_fraction = refine_fraction
        self.refine_max_rounds = refine_max_rounds
        self.refine_max_age = refine_max_age
        self.mask_fraction = mask_fraction
        self.penalty_fraction = penalty_fraction
        self.explainer_update_fraction = explainer_update_fraction
        self.audit_size = audit_size
        self.audit_samples = audit_samples
        self.input_shape = input_shape
        self.value_range = value_range
        self.channels_last = channels_last
        self.autocast = autocast
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _get_param_names(self):
        # skorch lists every non-underscore-suffixed attribute, which leaks private state
        # such as ``_params_to_validate`` into get_params/clone.
        return [k for k in super()._get_param_names() if not k.startswith("_")]

    def set_params(self, **kwargs):
        """Set parameters; ``<component>__<param>`` is routed into the component object.

        ``set_params(attacker__eps=0.1)`` sets ``eps`` on ``self.attacker`` (scikit-learn's
        nested semantics) and, on an initialised estimator, rebuilds ``attacker_``.
        """
        nested, rest = {}, {}
        for key, val in kwargs.items():
            head, sep, sub = key.partition("__")
            if sep and head in COMPONENTS:
                nested.setdefault(head, {})[sub] = val
            else:
                rest[key] = val
        if rest:
            super().set_params(**rest)
        for head, params in nested.items():
            comp = getattr(self, head)
            if comp is None:
                raise ValueError(f"cannot set {sorted(params)} on {head}: {head} is None")
            comp.set_params(**params)
        if self.initialized_ and (nested or any(k in COMPONENTS for k in rest)):
            self.initialize_components()
        return self

    _parameter_constraints = {
        "clean_weight": [Real(0, 1)],
        "mask_weight": [Real(0, None)],
        "refine_mode": [Options("rounds", "online")],
        "refine_every": [Integral(1, None)],
        "refine_fraction": [Real(0, 1, closed="right")],
        "refine_max_rounds": [None, Integral(1, None)],
        "refine_max_age": [None, Integral(1, None)],
        "mask_fraction": [Real(0, 1, closed="right")],
        "penalty_fraction": [Real(0, 1)],
        "explainer_update_fraction": [Real(0, 1)],
        "audit_size": [Integral(0, None)],
        "audit_samples": [Integral(2, None)],
        "autocast": [None, Options(False, "bf16", "bfloat16", "fp16", "float16")],
    }

    def _validate_own_params(self):
        validate_params(self)
        for slot in COMPONENTS:
            comp = getattr(self, slot)
            check_component(slot, comp)
            if callable(getattr(comp, "_validate_params", None)):
                comp._validate_params()  # a component's bad hyperparameter fails before any training
        if self.regularizer is not None and self.masker is None and capability(self.regularizer, "requires_mask"):
            raise ValueError("a regularizer needs a masker to find the spurious regions it penalises: pass "
                             "masker=LimeMasker(...) (with mask_weight=0 to use the penalty alone)")
        if self.refine_mode == "online" and self.masker is not None and not callable(
                getattr(self.masker, "segment_scores", None)):
            raise ValueError(f"refine_mode='online' needs a masker with segment_scores(attribution, ...), got "
                             f"{type(self.masker).__name__}")
        if self.value_range is not None:
            lo, hi = self.value_range
            if not lo < hi:
                raise ValueError(f"value_range must be (low, high) with low < high, got {self.value_range!r}")

    @property
    def _default_callbacks(self):
        terms = [(f"train_{t}_loss", PassthroughScoring(name=f"{t}_loss", on_train=True))
                 for t in ("adv", "clean", "masked", "penalty")]
        return list(super()._default_callbacks) + terms + [("refinement", Refinement()),
                                                           ("audit", ExplanationAudit())]

    # ------------------------------------------------------------------ initialisation
    def initialize(self):
        """Seed, initialise the skorch parts, then the components (``*_`` copies)."""
        self._validate_own_params()
        self.__dict__.pop("n_features_in_", None)
        self.__dict__.pop("n_outputs_", None)
        self.mask_cache_ = None
        if self.random_state is not None:
            torch.manual_seed(int(self.random_state))
        super().initialize()
        self.initialize_components()
        return self

    def initialize_module(self):
        super().initialize_module()
        if self.channels_last:
            self.module_.to(memory_format=torch.channels_last)
        return self

    def initialize_components(self):
        """Build the fitted copies ``attacker_``, ``masker_``, ``regularizer_``, ``explainer_``."""
        for name in COMPONENTS:
            comp = getattr(self, name)
            setattr(self, name + "_", clone(comp) if comp is not None else None)
        if self.explainer_ is None:
            self.explainer_ = LimeExplainer(n_samples=200, sampling="foldover", random_state=self.random_state)
        return self

    # ------------------------------------------------------------------ data
    def _check_X(self, X):
        """Validate images; returns a float tensor, or a validated ``uint8`` tensor kept as is."""
        t = as_tensor(X)
        if self.input_shape is not None and t.ndim == 2:
            if t.shape[1] == 0:
                raise ValueError(f"Found array with 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 "
                                 "is required.")
            try:
                t = t.reshape(t.shape[0], *self.input_shape)
            except RuntimeError as exc:
                raise ValueError(f"X of shape {tuple(t.shape)} cannot be reshaped to "
                                 f"input_shape={self.input_shape}") from exc
        vr = None if self.value_range is None else tuple(float(v) for v in self.value_range)
        if vr is None and not t.is_floating_point() and t.dtype != torch.bool:
            t = t.float()  # non-image data (value_range=None): integers are plain numbers
        Xt = check_images(t, value_range=vr)
        prev = self.__dict__.get("n_features_in_")
        n_features = int(np.prod(Xt.shape[1:]))
        if prev is not None and prev != n_features:
            raise ValueError(f"X has {n_features} features, but {type(self).__name__} is expecting "
                             f"{prev} features as input (X has shape {tuple(Xt.shape)})")
        if t.dtype == torch.uint8:
            return t
        return Xt.float() if Xt.dtype != torch.float32 else Xt

    def get_dataset(self, X, y=None):
        """Validate ``X`` (and ``y``) and wrap them in an :class:`ImageDataset`."""
        if isinstance(X, (ImageDataset, IndexedDataset)):
            return X
        if isinstance(X, Dataset):
            if len(X) == 0:
                raise ValueError("X is an empty Dataset")
            return IndexedDataset(X)
        cached = self.__dict__.pop("_checked_X", None)
        Xt = cached[1] if cached is not None and cached[0] is X else self._check_X(X)
        yt = None
        if y is not None:
            yt = check_labels(y, len(Xt))
        return ImageDataset(Xt, yt)

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        # Validate before any callback touches the data (skorch notifies callbacks of
        # on_train_begin before fit_loop calls check_data).
        self.check_data(X, y)
        super().on_train_begin(net, X=X, y=y, **kwargs)

    def check_data(self, X, y):
        if y is None and not isinstance(X, Dataset):
            raise ValueError("this classifier requires y to be passed, but the target y is None "
                             "(or pass a Dataset of (x, y) items)")
        n = None
        if not isinstance(X, Dataset):
            cached = self.__dict__.get("_checked_X")
            Xt = cached[1] if cached is not None and cached[0] is X else self._check_X(X)
            self.__dict__["_checked_X"] = (X, Xt)  # validated once; get_dataset reuses it
            n = len(Xt)
        elif hasattr(X, "__len__"):
            n = len(X)
        if y is not None:
            yt = check_labels(y, n)
            self.classes_inferred_ = np.unique(yt.numpy())
        else:
            super().check_data(X, y)
        if not isinstance(X, Dataset):
            n_features = int(np.prod(Xt.shape[1:]))
            prev = self.__dict__.get("n_features_in_")
            if prev is not None and prev != n_features:
                raise ValueError(f"X has {n_features} features, but {type(self).__name__} is fitted for "
                                 f"{prev} features")
            self.n_features_in_ = n_features
            if self.initialized_ and y is not None and len(self.classes_) < 2 and self.classes is None:
                raise ValueError(f"Classifier can't train when only one class is present: y has only class "
                                 f"{self.classes_.tolist()}")
            self._check_module_outputs(Xt[:1])

    def _check_module_outputs(self, x):
        """One forward pass on one image: the module must return one logit per class."""
        if not self.initialized_:
            return
        x, _ = self._to_input(x.float() / 255.0 if x.dtype == torch.uint8 else x)
        with torch.no_grad(), eval_mode(self.module_):
            out = self.module_(x)
        n_classes = len(self.classes_)
        if (isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] != n_classes
                and self._can_set_num_classes()):
            # The user left the module's num_classes at its default: size it from y.
            self.n_outputs_ = n_classes
            if self.random_state is not None:
                torch.manual_seed(int(self.random_state))
            verbose, self.verbose = self.verbose, 0  # no "re-initializing" chatter for this
            try:
                self._initialize_module(reason=None)
                self._initialize_criterion(reason=None)
                self._initialize_optimizer(reason=None)
            finally:
                self.verbose = verbose
            with torch.no_grad(), eval_mode(self.module_):
                out = self.module_(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != n_classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the module returns outputs of shape {shape} for one image, but y has "
                             f"{n_classes} classes: the module must return (N, {n_classes}) logits "
                             f"(e.g. set module__num_classes={n_classes})")

    def _can_set_num_classes(self) -> bool:
        """True when ``module`` is a class taking ``num_classes`` that the user did not set."""
        if "module__num_classes" in self.__dict__ or not inspect.isclass(self.module):
            return False
        try:
            return "num_classes" in inspect.signature(self.module).parameters
        except (TypeError, ValueError):  # pragma: no cover
            return False

    def get_params_for(self, prefix):
        params = super().get_params_for(prefix)
        n_out = self.__dict__.get("n_outputs_")
        if prefix == "module" and n_out is not None and "num_classes" not in params:
            params["num_classes"] = n_out
        return params

    def encode_labels(self, y) -> torch.Tensor:
        """Map class labels to output indices ``0..n_classes-1``; unknown labels raise ``ValueError``."""
        return self._encode_y(torch.as_tensor(y).long())

    def _encode_y(self, y: torch.Tensor) -> torch.Tensor:
        """Map labels to ``0..n_classes-1`` (identity when classes are ``0..K-1``)."""
        classes = np.asarray(self.classes_)
        if np.array_equal(classes, np.arange(len(classes))):
            enc = y
        else:
            ct = torch.as_tensor(classes, device=y.device)
            enc = torch.searchsorted(ct, y)
            enc = enc.clamp_max(len(classes) - 1)
            if bool((ct[enc] != y).any()):
                unknown = torch.unique(y[ct[enc] != y]).tolist()
                raise ValueError(f"y contains labels not seen in fit: {unknown}")
        if bool((enc >= len(classes)).any()) or bool((enc < 0).any()):
            raise ValueError(f"y contains labels not seen in fit: {torch.unique(y[enc >= len(classes)]).tolist()}")
        return enc

    # ------------------------------------------------------------------ forward helpers
    def _to_input(self, x) -> tuple:
        """Batch X (a dict from :class:`ImageDataset` or a tensor) -> (images on device, index)."""
        index = None
        if isinstance(x, dict):
            index = x.get("index")
            x = x["X"]
        x = to_tensor(x, device=self.device)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, index

    def _autocast(self):
        dtype = _AUTOCAST.get(self.autocast)
        if dtype is None:
            return contextlib.nullcontext()
        dev = torch.device(self.device).type if self.device else "cpu"
        return torch.autocast(device_type=dev, dtype=dtype)

    def infer(self, x, **fit_params):
        x, _ = self._to_input(x)
        with self._autocast():
            out = self.module_(x, **fit_params)
        return out.float() if isinstance(out, torch.Tensor) and out.dtype != torch.float32 else out

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = self._encode_y(to_tensor(y_true, device=self.device).long())
        return self.criterion_(y_pred, y_true)

    # ------------------------------------------------------------------ training step
    def train_step_single(self, batch, **fit_params):
        """One training step: the method's loss, then backward.

        ``loss = CE(f(x_adv), y) [mixed with CE(f(x), y) by clean_weight]
        + mask_weight * CE(f(fill(x, M)), y) + regularizer.penalty(f, x, y, M)``, where
        ``M`` are the spurious segments of the batch's samples: cached from the last
        refinement round (``refine_mode="rounds"``) or computed for this batch with the
        current model (``refine_mode="online"``).  Terms whose component is ``None`` (or whose
        weight is 0) are skipped, which gives the baselines: clean training, adversarial
        training, masking only, regularizer only.

        Every cross-entropy term goes through :meth:`get_loss` (with ``X`` the images that
        produced ``y_pred``), so a subclass that overrides ``get_loss`` sees, and can add to,
        each of them; each term's batch value is recorded as ``<term>_loss`` and its epoch mean
        appears in the history under the same key (``adv_loss``, ``masked_loss``, ...).
        """
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        X, index = self._to_input(Xi)
        yi = to_tensor(yi, device=self.device)
        y = self._encode_y(yi.long())
        module = self.module_
        src = None
        if self.augment_ is not None:
            X, src = self.augment_(X)
        online = self.refine_mode == "online" and self.masker_ is not None
        sel = None if online else self._batch_selection(index, src)
        two_phase = online and self._two_phase()

        terms = {}
        X_adv = grad = grad_adv = None
        if self.attacker_ is not None:
            X_adv, grad = self._perturb(module, X, y, sel, want_grad=online)
            if two_phase:
                X_adv = X_adv.detach().requires_grad_(True)
            with self._autocast():
                y_pred = module(X_adv, **fit_params).float()
            if capability(self.attacker_, "provides_objective"):  # the attacker brings its own loss (TRADES)
                with self._autocast():
                    logits_clean = module(X, **fit_params).float()
                loss = self.attacker_.objective(logits_clean, y_pred, y)
            else:
                loss = self.get_loss(y_pred, yi, X=X_adv, training=True)
                terms["adv"] = loss.detach()
                if self.clean_weight > 0:
                    with self._autocast():
                        logits_clean = module(X, **fit_params).float()
                    loss_clean = self.get_loss(logits_clean, yi, X=X, training=True)
                    terms["clean"] = loss_clean.detach()
                    loss = (1 - self.clean_weight) * loss + self.clean_weight * loss_clean
            terms["adv"] = terms.get("adv", loss.detach())
        else:
            with self._autocast():
                y_pred = module(X, **fit_params).float()
            loss = self.get_loss(y_pred, yi, X=X, training=True)

        if two_phase:
            # phase 1: the adversarial term's backward yields the parameter gradients and, at
            # no extra cost, the input gradient at x_adv that the x_adv attribution needs
            self._backward(loss)
            grad_adv = X_adv.grad.detach() * self._loss_scale(len(X))
            X_adv = X_adv.detach()
            loss = loss.detach()  # phase 2 back-propagates only the terms added below
        if online:
            fit_rows = self._fused_fit_rows(len(X))
            emod = self._explainer_module(module)
            if not fit_rows:
                self._update_explainer(emod, X, y)
            sel = self._online_selection(module, X, X_adv, y, grad, grad_adv, fit_rows, emod)
        if sel is not None:
            segments, selected, has = sel
            share = has.sum() / len(has)
            if self.mask_weight > 0:
                X_masked = self.masker_.apply(X[has], segments[has], selected[has])
                with self._autocast():
                    logits_masked = module(X_masked, **fit_params).float()
                loss_masked = self.get_loss(logits_masked, yi[has], X=X_masked, training=True)
                terms["masked"] = loss_masked.detach()
                # averaged over the explained rows, weighted by their share of the batch
                loss = loss + self.mask_weight * loss_masked * share
            if self.regularizer_ is not None and capability(self.regularizer_, "requires_mask"):
                rows = self._penalty_rows(has) if online else has
                # outside autocast unless the regularizer declares it safe: the finite-difference
                # penalty subtracts two passes at h = 0.01, and in bf16 their rounding error is
                # as large as the difference (docs/performance.md, "In channels_last + bf16")
                cast = self._autocast() if capability(self.regularizer_, "autocast_safe") else contextlib.nullcontext()
                with cast:
                    pen = self.regularizer_.penalty(module, X[rows], y[rows],
                                                    pixel_mask(segments[rows], selected[rows]))
                terms["penalty"] = pen.detach()
                loss = loss + pen * (rows.sum() / len(rows))
        if self.regularizer_ is not None and not capability(self.regularizer_, "requires_mask"):
            # a regularizer of the whole input (e.g. GradAlign): no masker needed, every row
            pen = self.regularizer_.penalty(module, X, y, None)
            terms["penalty"] = pen.detach()
            loss = loss + pen
        if loss.requires_grad:
            self._backward(loss)
        self._record_terms(terms)
        return {"loss": loss, "y_pred": y_pred}

    def _two_phase(self) -> bool:
        """Whether the online step takes the x_adv attribution from the training backward.

        That is the case when the masker needs an attribution of ``x_adv``, the explainer is a
        gradient one (``uses_input_grad``) and the adversarial cross-entropy is the whole loss
        before the masked terms (no clean mixing, no attacker objective).
        """
        return (self.attacker_ is not None and self.clean_weight == 0
                and not capability(self.attacker_, "provides_objective")
                and capability(self.explainer_, "uses_input_grad")
                and "attribution_adv" in self.masker_.needs())

    def _loss_scale(self, n: int) -> float:
        """Factor turning the gradient of the batch loss into that of the per-example losses."""
        return float(n) if getattr(self.criterion_, "reduction", "mean") == "mean" else 1.0

    def _backward(self, loss):
        """Backward pass of the training loss; subclasses route it (e.g. through accelerate)."""
        loss.backward()

    def _batch_selection(self, index, src=None):
        """Cached ``(segments, selected, explained)`` of the batch, or ``None`` if none apply.

        With an augmentation's source map ``src``, the segment maps follow the pixels; padding
        pixels get an extra segment that is never selected.
        """
        cache = getattr(self, "mask_cache_", None)
        if cache is None or index is None or self.masker_ is None:
            return None
        segments, selected, has = cache.batch(index, self.device)
        if not bool(has.any()):
            return None
        if src is not None:
            pad = selected.shape[1]
            segments = follow(segments, src, pad)
            selected = torch.cat([selected, selected.new_zeros((len(selected), 1))], dim=1)
        return segments, selected, has

    def _perturb(self, module, X, y, sel, want_grad=False):
        """``(X_adv, grad)``: ``grad`` is the attack's input gradient when asked for and declared."""
        kwargs = {}
        if sel is not None and capability(self.attacker_, "accepts_mask"):
            segments, selected, has = sel
            kwargs["mask"] = pixel_mask(segments, selected & has[:, None]).to(X.dtype)
        with_grad = want_grad and capability(self.attacker_, "provides_input_grad")
        with self._autocast():  # the attack's passes get the same precision as training's
            out = self.attacker_.perturb(module, X, y, return_grad=True, **kwargs) if with_grad \
                else self.attacker_.perturb(module, X, y, **kwargs)
        return out if with_grad else (out, None)

    # ------------------------------------------------------------------ online refinement
    def _n_rows(self, fraction, n):
        return max(1, min(n, int(math.ceil(float(fraction) * n))))

    def _penalty_rows(self, has):
        """The first ``penalty_fraction`` of the batch among the masked rows (batches are shuffled)."""
        rows = has.clone()
        keep = self._n_rows(self.penalty_fraction, len(has))
        idx = torch.nonzero(has).flatten()
        rows[idx[keep:]] = False
        return rows

    def _segments(self, X):
        """Segment maps ``(N, H, W)`` from the explainer's segmenter (the default grid is cached)."""
        if getattr(self.explainer_, "segmenter", None) is not None:
            return segments_for(self.explainer_, X)
        h, w = X.shape[-2:]
        key = (h, w, str(X.device))
        cache = self.__dict__.setdefault("_grid_cache", {})
        if key not in cache:
            cache[key] = segments_for(self.explainer_, X[:1])[0]
        return cache[key].expand(X.shape[0], h, w)

    def _input_grad(self, module, X, y):
        """Input gradient of the summed cross-entropy at ``X`` (eval mode, parameters untouched)."""
        with eval_mode(module), torch.enable_grad(), self._autocast():
            Xg = X.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(module(Xg).float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, Xg)
        return g

    def _attribute(self, module, X, y, segments, grad=None, fit_rows=0):
        """Attributions of ``X`` for ``y``; gradient explainers reuse ``grad`` (of the CE) when given.

        ``fit_rows > 0``: a trainable explainer takes its online step on ``X[:fit_rows]`` in
        the same call (``partial_fit_explain``), sharing the classifier passes.
        """
        if capability(self.explainer_, "uses_input_grad"):
            if grad is None:
                grad = self._input_grad(module, X, y)
            return self.explainer_.attribute_from_grad(X, -grad, segments, y)  # -grad CE = grad log p_y
        # the masker reads the weights only: an explainer whose intercept costs a pass of its own
        # skips it (declared by ``optional_intercept``)
        kw = {"intercept": False} if capability(self.explainer_, "optional_intercept") else {}
        with eval_mode(module):
            if fit_rows:
                return self.explainer_.partial_fit_explain(module, X, y, n_fit=fit_rows, segments=segments, **kw)
            return self.explainer_.explain(module, X, y, segments=segments, **kw)

    def _update_explainer(self, module, X, y):
        """One online step of a trainable explainer (amortized LIME) against the current model."""
        if not capability(self.explainer_, "trainable") or self.explainer_update_fraction == 0:
            return
        n = self._n_rows(self.explainer_update_fraction, len(X))
        with eval_mode(module):
            self.explainer_.partial_fit(module, X[:n].detach(), y[:n])

    def _fused_fit_rows(self, n_batch: int) -> int:
        """Rows of the explainer's online step when it can share the clean images' explanation
        (``fused_fit_explain``: its rows are among the explained ones); 0 otherwise."""
        if not (capability(self.explainer_, "trainable") and capability(self.explainer_, "fused_fit_explain")
                and not capability(self.explainer_, "uses_input_grad")
                and self.explainer_update_fraction > 0 and "attribution" in self.masker_.needs()):
            return 0
        n = self._n_rows(self.explainer_update_fraction, n_batch)
        return n if n <= self._n_rows(self.mask_fraction, n_batch) else 0

    def _explainer_module(self, module):
        """What a model-running explainer runs in the online step: an eval-mode copy of the
        current ``module`` with its ``Conv2d -> BatchNorm2d`` pairs folded (the same function up
        to rounding, about 10 % cheaper passes on ``SmallCNN``), refreshed once per step
        (:func:`~attribshield.explainers._model.refold_conv_bn`, no copy) for the explanations of
        ``x`` and ``x_adv`` and the explainer's own step; ``module`` itself
        where there is nothing to fold or the explainer only reads the step's gradients."""
        if capability(self.explainer_, "uses_input_grad"):
            return module
        cached = self.__dict__.get("_fold_cache")
        if cached is None or cached[0] is not module or cached[1] != bool(self.channels_last):
            fused = fuse_conv_bn(module, channels_last=self.channels_last).requires_grad_(False)
            # nothing folded (no Conv -> BN pair, e.g. a pre-activation ResNet): no copy to refresh
            cached = (module, bool(self.channels_last), fused if fused._folded_pairs else None)
            self.__dict__["_fold_cache"] = cached
            return module if cached[2] is None else fused
        return module if cached[2] is None else refold_conv_bn(cached[2], module)  # no copy

    def _online_selection(self, module, X, X_adv, y, grad, grad_adv=None, fit_rows=0, emod=None):
        """Fresh spurious segments of the first ``mask_fraction`` of the batch, with the current model.

        ``grad`` and ``grad_adv`` are input gradients of the per-example cross-entropy at the
        attack's starting point and at ``X_adv`` when the step has them already; ``fit_rows``
        (see :meth:`_fused_fit_rows`) trains the explainer in the clean images' explanation;
        ``emod`` is the module the explainer runs (:meth:`_explainer_module`; ``module``).
        """
        emod = module if emod is None else emod
        n = self._n_rows(self.mask_fraction, len(X))
        Xr, yr = X[:n].detach(), y[:n]
        segments = self._segments(Xr)
        needs = self.masker_.needs()
        g = grad[:n] if grad is not None else None
        att = att_adv = None
        if "input_grad" in needs and g is None:
            g = self._input_grad(module, Xr, yr)
        if "attribution" in needs:
            att = self._attribute(emod, Xr, yr, segments, g, fit_rows)
        if "attribution_adv" in needs:
            Xa = X_adv[:n].detach() if X_adv is not None else Xr
            att_adv = self._attribute(emod, Xa, yr, segments, None if grad_adv is None else grad_adv[:n])
        scores = self.masker_.segment_scores(att, attribution_adv=att_adv, input_grad=g, segments=segments)
        n_seg = int(segments.amax()) + 1
        valid = att.valid if att is not None else torch.ones((n, n_seg), dtype=torch.bool, device=X.device)
        selected = self.masker_.select(scores, valid)
        has = torch.zeros(len(X), dtype=torch.bool, device=X.device)
        has[:n] = True
        full_seg = torch.zeros((len(X),) + tuple(segments.shape[1:]), dtype=torch.long, device=X.device)
        full_seg[:n] = segments
        full_sel = torch.zeros((len(X), selected.shape[1]), dtype=torch.bool, device=X.device)
        full_sel[:n] = selected
        return full_seg, full_sel, has

    def _record_terms(self, terms):
        """Record each loss term of the batch in the history (``<term>_loss`` keys)."""
        for key, val in terms.items():
            self.history.record_batch(f"{key}_loss", float(val))

    # ------------------------------------------------------------------ prediction
    def predict(self, X):
        """Predicted class labels, shape ``(N,)``."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_)[proba.argmax(axis=1)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy on ``(X, y)``; labels unseen in fit raise ``ValueError``."""
        from sklearn.metrics import accuracy_score

        self.check_is_fitted()
        yt = check_labels(y)
        unknown = np.setdiff1d(yt.numpy(), np.asarray(self.classes_))
        if unknown.size:
            raise ValueError(f"y contains labels not seen in fit: {unknown.tolist()}")
        return float(accuracy_score(yt.numpy(), self.predict(X), sample_weight=sample_weight))

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_checked_X", None)
        state.pop("_grid_cache", None)
        state.pop("_fold_cache", None)
        return state

    def explain(self, X, y=None):
        """Explain the predictions on ``X`` with the estimator's explainer.

        Parameters
        ----------
        X : array-like of shape (N, C, H, W)
            Images in [0, 1].
        y : array-like of shape (N,), optional
            Class labels to explain; default: the predicted classes.

        Returns
        -------
        attribution : attribshield.explainers.Attribution
            Segments ``(N, H, W)``, per-segment weights ``(N, S)``, intercepts and scores.
        """
        self.check_is_fitted()
        Xt = self._check_X(X)
        if Xt.dtype == torch.uint8:
            Xt = Xt.float() / 255.0
        if y is not None:
            target = self._encode_y(check_labels(y, len(Xt)))
        else:
            target = torch.as_tensor(self.predict_proba(Xt).argmax(axis=1))
        Xt = Xt.to(self.device)
        return self.explainer_.explain(self.module_, Xt, target.to(self.device))
