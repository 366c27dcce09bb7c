"""Run folders: train a preset into a folder, resume it after an interruption, load it back.

A run folder holds

- ``config.json``: the :class:`~attribshield.presets.TrainConfig`, the number of classes and
  any metadata the caller stored (campaign scripts record their arm and setting there);
- the checkpoints :class:`~attribshield.checkpoint.SafeCheckpoint` writes after every epoch
  (``epoch_NNNN/`` with the parameters as safetensors, the optimizer, ``history.json``, the
  mask cache and the explainer's state, and ``latest``).

This is the one checkpoint path of the project: ``attribshield train``, ``evaluate`` and
``explain`` and the campaign scripts in ``benchmarks/`` all go through :func:`train_run` and
:func:`load_run`.  An interrupted run resumes from its last finished epoch, with its
optimizer, learning-rate schedule position, mask cache and online explainer.

Examples
--------
>>> from attribshield.presets import TrainConfig, load_dataset
>>> cfg = TrainConfig(dataset="digits", method="fgsm_rs", epochs=1, train_subset=64, eps=0.1)
>>> X, y, n_classes = load_dataset(cfg)
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> clf = train_run(folder, cfg, X, y, n_classes, verbose=0)
training fgsm_rs (1 epochs)
>>> len(read_history(folder))
1
>>> clf2, cfg2, n = load_run(folder)
>>> bool((clf2.predict(X[:5]) == clf.predict(X[:5])).all())
True
>>> clf = train_run(folder, cfg, X, y, n_classes, verbose=0)  # run again: nothing to do
all 1 epochs are done
"""
from __future__ import annotations

import json
import os
import shutil

from .checkpoint import SafeCheckpoint, _write_text_atomic, latest_checkpoint, load_checkpoint
from .presets import TrainConfig, build_estimator

__all__ = ["RESUMABLE_CHANGES", "train_run", "load_run", "read_config", "read_history", "run_checkpoint"]

#: config fields that may change when a run resumes (longer training, another machine)
RESUMABLE_CHANGES = ("epochs", "device", "data_root")
CONFIG = "config.json"


def run_checkpoint(run_dir) -> str | None:
    """The folder of the run's newest complete checkpoint, or ``None`` before its first epoch."""
    return latest_checkpoint(run_dir)


def read_config(run_dir):
    """``(TrainConfig, n_classes, record)`` of a run folder; ``record`` is ``config.json`` as stored."""
    path = os.path.join(os.fspath(run_dir), CONFIG)
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir} holds no {CONFIG}: is it an 'attribshield train' run folder?")
    with open(path) as f:
        record = json.load(f)
    return TrainConfig.from_dict(record["config"]), int(record["n_classes"]), record


def read_history(run_dir) -> list:
    """The run's history (one dict per finished epoch) from its newest checkpoint; ``[]`` before one."""
    path = run_checkpoint(run_dir)
    if path is None:
        return []
    with open(os.path.join(path, "history.json")) as f:
        return json.load(f)


def _clear_checkpoints(run_dir) -> None:
    """Remove a run's checkpoints (``--restart``), leaving its other files alone."""
    for name in os.listdir(run_dir):
        full = os.path.join(run_dir, name)
        if name.startswith("epoch_") and os.path.isdir(full) or name.startswith(".tmp-epoch_"):
            shutil.rmtree(full, ignore_errors=True)
        elif name in ("latest", "params.pt", "optimizer.pt", "history.json", "mask_cache.pt"):
            os.remove(full)


def train_run(run_dir, cfg: TrainConfig, X, y, n_classes: int, *, meta=None, restart=False, callbacks=(),
              verbose=1, log=print, configure=None, **overrides):
    """Train ``cfg`` into ``run_dir``, or resume it there; returns the fitted estimator.

    Parameters
    ----------
    run_dir : str or path-like
        The run folder (created if needed).
    cfg : TrainConfig
        What to train; ``cfg.epochs`` is the total, finished epochs included.
    X, y : array-like
        Training images and labels.
    n_classes : int
    meta : dict or None
        JSON-able metadata stored in ``config.json``; on resume it must match what is stored,
        as must ``cfg`` except :data:`RESUMABLE_CHANGES`.
    restart : bool, default=False
        Delete the run's checkpoints and train from the first epoch.
    callbacks : sequence
        Extra skorch callbacks (or ``(name, callback)`` pairs); they run before the checkpoint,
        so what they record is saved with its epoch.
    verbose : int, default=1
        skorch's per-epoch table.
    log : callable, default=print
        Receives one line saying whether the run starts, resumes (after which epoch) or is
        complete.
    configure : callable or None
        Called with the built estimator before it is initialised (for example to set a
        component's parameter the preset does not expose).
    **overrides
        Estimator parameters on top of :func:`~attribshield.presets.build_estimator`'s.

    Raises
    ------
    ValueError
        ``run_dir`` holds a run of another configuration (pass ``restart=True`` or another folder).
    """
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    record = json.loads(json.dumps({"config": cfg.to_dict(), "n_classes": int(n_classes), **(meta or {})},
                                   default=float))
    if restart:
        _clear_checkpoints(run_dir)
    resume = run_checkpoint(run_dir) is not None
    if resume and os.path.isfile(os.path.join(run_dir, CONFIG)):
        with open(os.path.join(run_dir, CONFIG)) as f:
            old = json.load(f)

        def fixed(rec):
            # through TrainConfig, so that a field added since the run started reads as its default
            config = TrainConfig.from_dict(rec["config"]).to_dict()
            return {**{k: v for k, v in rec.items() if k != "config"},
                    "config": {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}}

        if fixed(old) != fixed(record):
            raise ValueError(f"{run_dir} holds a run with another configuration; restart it or use another folder")
    _write_text_atomic(os.path.join(run_dir, CONFIG), json.dumps(record, indent=2))
    checkpoint = SafeCheckpoint(dirname=run_dir, use_safetensors=True, keep=2)
    clf = build_estimator(cfg, n_classes=n_classes, callbacks=[*callbacks, ("checkpoint", checkpoint)],
                          verbose=verbose, **overrides)
    if configure is not None:
        configure(clf)
    clf.initialize()
    done = 0
    if resume:
        load_checkpoint(clf, run_dir)
        done = len(clf.history)
    remaining = cfg.epochs - done
    if remaining <= 0:
        log(f"all {cfg.epochs} epochs are done")
        return clf
    log(f"resuming after epoch {done} ({remaining} to go)" if done else f"training {cfg.method} ({remaining} epochs)")
    clf.set_params(max_epochs=remaining)
    clf.partial_fit(X, y)
    return clf


def load_run(run_dir, **overrides):
    """``(estimator, TrainConfig, n_classes)`` of a trained run folder, restored from its newest checkpoint.

    Loading reads tensors only (``weights_only``), so a run folder from elsewhere cannot run
    code.  ``overrides`` are estimator parameters (for example ``device="cuda"``).
    """
    cfg, n_classes, _ = read_config(run_dir)
    if run_checkpoint(run_dir) is None:
        raise ValueError(f"{run_dir} holds no finished epoch yet")
    clf = build_estimator(cfg, n_classes=n_classes, verbose=0, **overrides)
    clf.initialize()
    load_checkpoint(clf, run_dir)
    if getattr(clf, "classes_inferred_", None) is None:
        clf.classes_inferred_ = list(range(n_classes))
    return clf, cfg, n_classes
