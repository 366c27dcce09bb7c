"""Named training methods (the campaign's rows) and the data sets, for the CLI and benchmarks.

Every method uses the same model, optimiser, epochs and seed; only the components differ:

======================  =====================================================================
``clean``               plain training
``fgsm_rs``             FGSM with random start, step 1.25 eps ("fast" adversarial training)
``pgd``                 PGD-k adversarial training (k = ``pgd_steps``, step 2.5 eps / k)
``trades``              TRADES, beta = ``trades_beta`` (6), its KL attack with ``pgd_steps``
                        steps (the same number of attack passes as ``pgd``)
``full``                FGSM-RS + LimeMasker (combined) + SpuriousGradientPenalty + closed loop
``no_mask``             ``full`` without the masked-input loss (mask_weight = 0)
``no_reg``              ``full`` without the regularizer
``no_loop``             ``full`` with masks computed once, after the first epoch, with the same
                        total explanation budget (no closed loop)
======================  =====================================================================

The explaining methods use ``LimeExplainer(fuse_bn=True)`` (the refinement rounds explain a
conv-BN-folded copy of the model: the same function, 1.10x faster forwards on ``SmallCNN``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from .attacks import FGSM, PGD, TRADES
from .augment import RandomCropFlip
from .callbacks import one_cycle
from .data import load_cifar10, load_cifar100, load_digits
from .estimator import RobustAttributionClassifier
from .explainers import AmortizedLimeExplainer, GradientExplainer, LimeExplainer
from .maskers import CRITERIA, LimeMasker, RandomMasker
from .models import DigitsNet, PreActResNet18, SmallCNN
from .regularizers import SpuriousGradientPenalty, SpuriousSensitivityPenalty

METHODS = ("clean", "fgsm_rs", "pgd", "trades", "full", "no_mask", "no_reg", "no_loop",
           "full_amortized", "full_gradient", "random_mask")
ONLINE = ("full_amortized", "full_gradient", "random_mask")
LR_SCHEDULES = ("constant", "onecycle")
MODELS = ("digitsnet", "smallcnn", "preactresnet18")
DATASETS = ("digits", "cifar10", "cifar100")


def _opt(default, help, choices=None, **kw):
    """A config field with its command-line help (the CLI's flags are generated from these)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """Everything a training run needs; loadable from a TOML file (``[train]`` table).

    Every field is also a flag of ``attribshield train`` (``data_root`` -> ``--data-root``).
    """

    dataset: str = _opt("digits", "data set", DATASETS)
    data_root: str = _opt(".cache/cifar10", "folder holding the CIFAR copy (torchvision's layout)")
    verify: bool = _opt(False, "check the CIFAR files' md5 as torchvision does")
    model: str = _opt("digitsnet", "network", MODELS)
    method: str = _opt("full", "training method (attribshield.presets)", METHODS)
    epochs: int = _opt(15, "training epochs")
    batch_size: int = _opt(128, "batch size")
    lr: float = _opt(0.05, "learning rate (the peak of the one-cycle schedule)")
    lr_schedule: str = _opt("constant", "learning-rate schedule: constant, or the one-cycle schedule of "
                            "Wong et al. 2020 (linear up to lr over pct_start of the steps, then down)",
                            LR_SCHEDULES)
    pct_start: float = _opt(0.4, "share of the steps the one-cycle schedule spends rising")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    augment: bool = _opt(False, "random crop (4-pixel zero padding) and horizontal flip of training batches")
    eps: float = _opt(8 / 255, "Linf radius of the attacks")
    pgd_steps: int = _opt(7, "PGD / TRADES attack steps")
    trades_beta: float = _opt(6.0, "TRADES beta")
    top_k: int = _opt(3, "segments hidden per image (of 16)")
    criterion: str = _opt("combined", "which segments count as spurious (LimeMasker)", CRITERIA)
    reg_weight: float = _opt(0.05, "weight of the sensitivity penalty")
    mask_weight: float = _opt(0.25, "weight of the masked-input loss")
    lime_samples: int = _opt(64, "LIME samples per explained image (exact-LIME methods)")
    refine_every: int = _opt(1, "re-explain every this many epochs (exact-LIME methods)")
    refine_fraction: float = _opt(0.05, "share of the training set re-explained per round (exact-LIME methods)")
    mask_fraction: float = _opt(0.5, "full-dose methods: share of each batch that trains with a fresh mask")
    penalty_fraction: float = _opt(0.0625, "full-dose methods: share of each batch that also gets the penalty")
    penalty_h: float = _opt(0.01, "full-dose methods: step of the finite-difference penalty")
    penalty_bf16: bool = _opt(False, "full-dose methods: run the penalty's probes under the bf16 autocast too "
                              "(needs --bf16; cheaper; pair with a larger --penalty-h, docs/performance.md)")
    explainer_update_fraction: float = _opt(0.0625, "full_amortized: share of each batch used to train the "
                                            "explainer online")
    explainer_coalitions: int = _opt(8, "full_amortized: LIME coalitions per image and explainer step")
    audit_size: int = _opt(128, "full-dose methods: training images audited against exact LIME per epoch")
    audit_samples: int = _opt(256, "LIME samples per image of the audit's exact reference")
    train_subset: int = _opt(0, "train on the first N images only (0: all)")
    channels_last: bool = _opt(False, "channels-last memory format (faster convolutions on CPUs)")
    bf16: bool = _opt(False, "bfloat16 autocast for forward passes")
    device: str = _opt("cpu", "torch device, e.g. cpu or cuda")
    seed: int = _opt(0, "random seed")
    extra: dict = field(default_factory=dict, metadata={"help": None})

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.penalty_h > 0:
            raise ValueError(f"penalty_h must be > 0, got {self.penalty_h}")
        if self.penalty_bf16 and not self.bf16:
            raise ValueError("penalty_bf16 runs the penalty under the bf16 autocast and needs bf16=True "
                             "(--bf16); without it the flag would do nothing")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}; known: {sorted(names)}")
        return cls(**d).validate()

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get("train", data))

    def to_dict(self) -> dict:
        return asdict(self)


def load_dataset(cfg: TrainConfig, train: bool = True):
    """``(X, y, n_classes)``: uint8 arrays for CIFAR (4x less memory), float32 for digits."""
    if cfg.dataset == "digits":
        from sklearn.model_selection import train_test_split

        X, y = load_digits()
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        X, y = (X_tr, y_tr) if train else (X_te, y_te)
        n_classes = 10
    elif cfg.dataset == "cifar10":
        X, y = load_cifar10(cfg.data_root, train=train, verify=cfg.verify, dtype="uint8")
        n_classes = 10
    else:
        X, y = load_cifar100(cfg.data_root, train=train, verify=cfg.verify, dtype="uint8")
        n_classes = 100
    if train and cfg.train_subset:
        X, y = X[: cfg.train_subset], y[: cfg.train_subset]
    return X, y, n_classes


def build_estimator(cfg: TrainConfig, n_classes: int = 10, **kwargs):
    """The :class:`RobustAttributionClassifier` of ``cfg.method`` (see module docstring)."""
    cfg.validate()
    module = {"digitsnet": DigitsNet, "smallcnn": SmallCNN, "preactresnet18": PreActResNet18}[cfg.model]
    s = cfg.seed
    attacker = None
    if cfg.method == "pgd":
        attacker = PGD(eps=cfg.eps, steps=cfg.pgd_steps, random_state=s)
    elif cfg.method == "trades":
        attacker = TRADES(eps=cfg.eps, steps=cfg.pgd_steps, beta=cfg.trades_beta, random_state=s)
    elif cfg.method != "clean":
        attacker = FGSM(eps=cfg.eps, random_start=True, random_state=s)
    params = dict(
        module=module, module__num_classes=n_classes, classes=list(range(n_classes)), attacker=attacker,
        max_epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        optimizer=torch.optim.SGD, optimizer__momentum=cfg.momentum, optimizer__weight_decay=cfg.weight_decay,
        iterator_train__shuffle=True, channels_last=cfg.channels_last, autocast="bf16" if cfg.bf16 else None,
        device=cfg.device, random_state=s,
        augment=RandomCropFlip(padding=4, random_state=s) if cfg.augment else None,
    )
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if cfg.lr_schedule == "onecycle":  # sized from the training data when training begins
        callbacks.append(("lr_scheduler", one_cycle(cfg.lr, cfg.epochs, pct_start=cfg.pct_start)))
    if callbacks:
        params["callbacks"] = callbacks
    if cfg.method in ("full", "no_mask", "no_reg", "no_loop"):
        params.update(
            masker=LimeMasker(criterion=cfg.criterion, top_k=cfg.top_k, random_state=s),
            explainer=LimeExplainer(n_samples=cfg.lime_samples, random_state=s, channels_last=cfg.channels_last,
                                    autocast="bf16" if cfg.bf16 else None, fuse_bn=True),
            regularizer=None if cfg.method == "no_reg" else SpuriousGradientPenalty(weight=cfg.reg_weight),
            mask_weight=0.0 if cfg.method == "no_mask" else cfg.mask_weight,
            refine_every=cfg.refine_every, refine_fraction=cfg.refine_fraction,
        )
        if cfg.method == "no_loop":
            # the same explanation budget as ``full``, spent once after the first epoch
            rounds = max(1, cfg.epochs // cfg.refine_every)
            params.update(refine_every=1, refine_fraction=min(1.0, cfg.refine_fraction * rounds),
                          refine_max_rounds=1)
    if cfg.method in ONLINE:
        cast = "bf16" if cfg.bf16 else None
        if cfg.method == "full_amortized":
            explainer = AmortizedLimeExplainer(n_coalitions=cfg.explainer_coalitions, random_state=s,
                                               channels_last=cfg.channels_last, autocast=cast)
        else:
            explainer = GradientExplainer()
        masker = (RandomMasker(top_k=cfg.top_k, random_state=s) if cfg.method == "random_mask"
                  else LimeMasker(criterion=cfg.criterion, top_k=cfg.top_k, random_state=s))
        params.update(
            # the finite-difference penalty: double backprop through convolutions is the costliest
            # term on CPUs (docs/performance.md, "Full-dose cost")
            masker=masker, explainer=explainer,
            regularizer=SpuriousSensitivityPenalty(weight=cfg.reg_weight, h=cfg.penalty_h,
                                                   autocast=cfg.penalty_bf16, random_state=s),
            mask_weight=cfg.mask_weight, refine_mode="online", mask_fraction=cfg.mask_fraction,
            penalty_fraction=cfg.penalty_fraction, explainer_update_fraction=cfg.explainer_update_fraction,
            audit_size=0 if cfg.method == "random_mask" else cfg.audit_size, audit_samples=cfg.audit_samples,
        )
    params.update(cfg.extra)
    params.update(kwargs)
    return RobustAttributionClassifier(**params)
