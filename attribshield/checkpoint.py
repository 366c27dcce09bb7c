"""Checkpoints that cannot run code when loaded, written atomically, resumable after a crash.

A checkpoint is a folder ``dirname/epoch_NNNN/`` holding

- ``params.pt`` (or ``params.safetensors``): the module's ``state_dict``;
- ``optimizer.pt`` and, when the criterion has state, ``criterion.pt``;
- ``history.json``: skorch's history (JSON);
- ``mask_cache.pt``: the refinement loop's :class:`~attribshield.refinement.MaskCache`
  (tensors only), when the net has one;
- ``explainer.pt``: the state of a trainable explainer (``trainable`` capability, e.g. the
  online :class:`~attribshield.explainers.AmortizedLimeExplainer`): its ``state_dict()``;
- ``rng.pt``: the states of the random generators the next epoch draws from (see
  :func:`rng_state`), so that a resumed run continues bit for bit as the uninterrupted one;
- ``meta.json``: epoch, classes and input size (JSON).

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` whatever the net's
``torch_load_kwargs`` say: the restricted unpickler accepts tensors, containers and numbers and
refuses any other global, so a tampered file raises ``pickle.UnpicklingError`` instead of
executing code.  JSON files are parsed, never evaluated.

A checkpoint is first written to a hidden temporary folder and then renamed into place, and
``dirname/latest`` is replaced atomically afterwards, so a process killed at any moment leaves
either the previous or the new checkpoint, never a half-written one.

Use :class:`SafeCheckpoint` as a skorch callback (with skorch's ``LoadInitState`` to resume),
or call :func:`save_checkpoint` / :func:`load_checkpoint` directly; :mod:`attribshield.runs`
builds ``attribshield train``'s run folders on them.

A flat folder as skorch's own ``Checkpoint`` writes it (``params.pt``, ``optimizer.pt``,
``history.json`` and, beside them, ``mask_cache.pt``) is read as one checkpoint, with the
same ``weights_only`` loading, so runs saved that way can still be resumed and evaluated.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings

import numpy as np
import torch
from safetensors.torch import save_file
from skorch.callbacks import Checkpoint
from skorch.utils import noop

from ._params import Integral, check_param, validate_params
from .base import Component, capability
from .refinement import MaskCache

__all__ = ["SafeCheckpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state"]

FORMAT_VERSION = 1
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
_SAFE_LOAD = {"weights_only": True}


def _is_main_process(net) -> bool:
    acc = getattr(net, "accelerator", None)
    return True if acc is None else bool(getattr(acc, "is_main_process", True))


def _jsonable(values):
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(values).tolist()]


def _write_text_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(dirname) -> str | None:
    """Folder of the newest complete checkpoint under ``dirname``, or ``None``.

    Follows ``dirname/latest``; when that file is missing or stale, falls back to the
    ``epoch_NNNN`` folder with the highest epoch that has a ``meta.json``, and then to
    ``dirname`` itself when it is a flat skorch ``Checkpoint`` folder (``params.pt`` and
    ``history.json``).
    """
    dirname = os.fspath(dirname)
    if not os.path.isdir(dirname):
        return None
    pointer = os.path.join(dirname, "latest")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        if _EPOCH_DIR.match(name) and os.path.isfile(os.path.join(dirname, name, "meta.json")):
            return os.path.join(dirname, name)
    found = sorted((int(m.group(1)), n) for n in os.listdir(dirname) if (m := _EPOCH_DIR.match(n))
                   and os.path.isfile(os.path.join(dirname, n, "meta.json")))
    if found:
        return os.path.join(dirname, found[-1][1])
    return dirname if _is_flat(dirname) else None


def _is_flat(path) -> bool:
    """A folder written by skorch's ``Checkpoint`` with ``f_params="params.pt"``."""
    return (not os.path.isfile(os.path.join(path, "meta.json")) and os.path.isfile(os.path.join(path, "params.pt"))
            and os.path.isfile(os.path.join(path, "history.json")))


def save_checkpoint(net, dirname, *, use_safetensors=False, keep=2) -> str:
    """Save ``net``'s state as ``dirname/epoch_NNNN`` (NNNN = epochs trained) atomically.

    Parameters
    ----------
    net : RobustAttributionClassifier
        An initialised (usually fitted) estimator; any skorch net works (without a mask cache).
    dirname : str or path-like
        Checkpoint root; created if needed.  One writing process per ``dirname``.
    use_safetensors : bool, default=False
        Store the module's parameters with safetensors (``params.safetensors``) instead of
        ``torch.save``.  The optimizer state always uses ``torch.save`` (safetensors cannot
        hold it); both are loaded without running code.
    keep : int or None, default=2
        Number of newest checkpoints kept; older ones are deleted.  ``None`` keeps all.

    Returns
    -------
    path : str
        The checkpoint folder.

    Notes
    -----
    With :class:`~attribshield.accelerate.AcceleratedRobustAttributionClassifier` every
    process must call this (``save_params`` synchronises); only the main process writes.
    """
    if not getattr(net, "initialized_", False):
        raise ValueError("cannot save a checkpoint of an uninitialised net: fit or initialize it first")
    check_param("save_checkpoint", "keep", keep, [None, Integral(1, None)])
    dirname = os.fspath(dirname)
    epoch = len(net.history)
    name = f"epoch_{epoch:04d}"
    final = os.path.join(dirname, name)
    tmp = os.path.join(dirname, f".tmp-{name}-{os.getpid()}")
    main = _is_main_process(net)
    if main:
        os.makedirs(dirname, exist_ok=True)
        for stale in os.listdir(dirname):  # left behind by a process killed while saving
            if stale.startswith(".tmp-"):
                shutil.rmtree(os.path.join(dirname, stale), ignore_errors=True)
        os.makedirs(tmp)
    f_params = os.path.join(tmp, "params.safetensors" if use_safetensors else "params.pt")
    files = {"f_optimizer": os.path.join(tmp, "optimizer.pt"), "f_history": os.path.join(tmp, "history.json")}
    criterion = getattr(net, "criterion_", None)
    if criterion is not None and hasattr(criterion, "state_dict") and criterion.state_dict():
        files["f_criterion"] = os.path.join(tmp, "criterion.pt")
    # every process calls save_params (accelerate synchronises there); the main one writes
    if use_safetensors:
        # skorch hands the state_dict to safetensors as it is, and safetensors refuses the
        # non-contiguous weights of a channels_last module: write contiguous copies here
        net.save_params(**files)
        if main:
            acc = getattr(net, "accelerator", None)
            module = acc.unwrap_model(net.module_) if acc is not None else net.module_
            save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, f_params)
    else:
        net.save_params(f_params=f_params, **files)
    if not main:
        return final
    cache = getattr(net, "mask_cache_", None)
    if isinstance(cache, MaskCache):
        cache.save(os.path.join(tmp, "mask_cache.pt"))
    explainer_state = _explainer_state(net)
    if explainer_state is not None:
        torch.save(explainer_state, os.path.join(tmp, "explainer.pt"))
    torch.save(rng_state(net), os.path.join(tmp, "rng.pt"))
    classes = getattr(net, "classes_", None) if epoch else None
    meta = {
        "format": FORMAT_VERSION,
        "estimator": type(net).__name__,
        "epoch": epoch,
        "params": os.path.basename(f_params),
        "classes": None if classes is None else _jsonable(classes),
        "n_features_in": net.__dict__.get("n_features_in_"),
        "n_outputs": net.__dict__.get("n_outputs_"),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:  # written last: marks the folder complete
        json.dump(meta, f)
    if os.path.exists(final):  # saving the same epoch again (e.g. after load_checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(os.path.join(dirname, "latest"), name)
    if keep is not None:
        done = sorted((int(m.group(1)), n) for n in os.listdir(dirname) if (m := _EPOCH_DIR.match(n)))
        for _, old in done[:-keep]:
            if old != name:
                shutil.rmtree(os.path.join(dirname, old), ignore_errors=True)
    return final


def _trainable_explainer(net):
    explainer = getattr(net, "explainer_", None)
    if explainer is None or not capability(explainer, "trainable"):
        return None
    return explainer if callable(getattr(explainer, "state_dict", None)) else None


def _explainer_state(net):
    explainer = _trainable_explainer(net)
    return None if explainer is None else explainer.state_dict()


def _components(net) -> list:
    """``(path, component)`` of every attribshield component the fitted net holds.

    The net's public fitted attributes (``attacker_``, ``masker_``, ...) and, recursively,
    components given as parameters of those (``masker_.explainer``, or in a list:
    ``regularizer_.parts[0]``), each object once, in a fixed order: the paths name the
    generators in ``rng.pt``.
    """
    found, seen = [], set()

    def walk(path, obj):
        if isinstance(obj, (list, tuple)):  # a user's composite holding several components
            for i, item in enumerate(obj):
                walk(f"{path}[{i}]", item)
            return
        if not isinstance(obj, Component) or id(obj) in seen:
            return
        seen.add(id(obj))
        found.append((path, obj))
        for key, value in sorted(obj.get_params(deep=False).items()):
            walk(f"{path}.{key}", value)

    for name in sorted(vars(net)):
        if name.endswith("_") and not name.startswith("_"):
            walk(name, vars(net)[name])
    return found


def rng_state(net) -> dict:
    """The states of every random generator a training epoch of ``net`` draws from.

    torch's global generator (shuffling, module code, components without a ``random_state``)
    and, when CUDA is initialised, every CUDA device's; NumPy's and Python's global generators;
    the per-device ``torch.Generator`` of every component with a ``random_state`` (random
    starts, crops and flips, random masks, explainer samples); and the rotation of
    :class:`~attribshield.refinement.ExplanationAudit`.  Tensors, numbers, strings and plain
    containers only, so ``torch.load(weights_only=True)`` reads it back.
    :func:`save_checkpoint` stores it as ``rng.pt`` and :func:`load_checkpoint` restores it
    with :func:`set_rng_state`.

    Returns
    -------
    state : dict
    """
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
        "components": {},
        "audit_cursor": int(net.__dict__.get("audit_cursor_", 0)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    for path, comp in _components(net):
        gens = {key: gen.get_state() for key, gen in sorted(comp.__dict__.get("_generators", {}).items())}
        own = getattr(comp, "random_state", None)
        if isinstance(own, torch.Generator):  # a generator given by the user is drawn from directly
            gens["random_state"] = own.get_state()
        if gens:
            state["components"][path] = gens
    return state


def _usable(device_key) -> bool:
    device = torch.device(device_key)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    return False


def _check_rng_state(state) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"an rng state is the dict rng_state returns, got {type(state).__name__}")
    main = state.get("torch")
    if not (isinstance(main, torch.Tensor) and main.dtype == torch.uint8 and main.ndim == 1):
        raise ValueError("the rng state's 'torch' entry must be torch.get_rng_state()'s uint8 tensor")
    components = state.get("components", {})
    if not isinstance(components, dict) or not all(
            isinstance(g, dict) and all(isinstance(t, torch.Tensor) for t in g.values()) for g in components.values()):
        raise ValueError("the rng state's 'components' entry must map component paths to {device: state tensor}")


def set_rng_state(net, state) -> None:
    """Restore the generators of :func:`rng_state` (the inverse; on another net of the same shape).

    A component generator saved for a device this machine lacks (a CUDA run resumed on the
    CPU) is skipped: the component starts again from its ``random_state`` there, and the run
    continues correctly but not bit for bit.  CUDA states are restored when the number of
    devices matches.

    Raises
    ------
    ValueError
        ``state`` is not what :func:`rng_state` returns; checked before anything is restored.
    """
    _check_rng_state(state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"the checkpoint holds the CUDA generator states of {len(cuda)} devices and this machine "
                          f"has {torch.cuda.device_count()}: the CUDA generators are not restored", RuntimeWarning,
                          stacklevel=3)
    npy = state.get("numpy")
    if npy is not None:
        np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    py = state.get("python")
    if py is not None:
        random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    components = dict(_components(net))
    for path, gens in state.get("components", {}).items():
        comp = components.get(path)
        if comp is None:
            continue
        for key, gen_state in gens.items():
            if key == "random_state":
                own = getattr(comp, "random_state", None)
                if isinstance(own, torch.Generator):
                    own.set_state(gen_state)
            elif _usable(key):
                gen = torch.Generator(device=torch.device(key))
                gen.set_state(gen_state)
                comp.__dict__.setdefault("_generators", {})[key] = gen
    if "audit_cursor" in state:
        net.audit_cursor_ = int(state["audit_cursor"])


def _restore_extras(net, path) -> None:
    """The mask cache, the trainable explainer's and the generators' states saved beside the parameters."""
    cache_path = os.path.join(path, "mask_cache.pt")
    net.mask_cache_ = MaskCache.load(cache_path) if os.path.isfile(cache_path) else None
    explainer = _trainable_explainer(net)
    state_path = os.path.join(path, "explainer.pt")
    if explainer is not None and os.path.isfile(state_path):
        explainer.load_state_dict(torch.load(state_path, map_location="cpu", **_SAFE_LOAD))


def _restore_rng(net, path) -> None:
    rng_path = os.path.join(path, "rng.pt")
    if os.path.isfile(rng_path):  # checkpoints written before rng.pt existed resume without it
        set_rng_state(net, torch.load(rng_path, map_location="cpu", **_SAFE_LOAD))


def _read_meta(path) -> dict:
    if _is_flat(path):  # skorch's layout: no meta.json, the rest is recovered from the net
        return {"format": FORMAT_VERSION, "epoch": None, "params": "params.pt", "classes": None}
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an attribshield checkpoint of format {FORMAT_VERSION}")
    params = meta.get("params")
    if params not in ("params.pt", "params.safetensors"):
        raise ValueError(f"{path}/meta.json names an unexpected parameter file {params!r}")
    return meta


def load_checkpoint(net, dirname):
    """Restore ``net`` from the newest checkpoint under ``dirname`` (or a checkpoint folder).

    Parameters, optimizer and criterion state, history, mask cache, classes and input size
    are restored, and so are the random generators (:func:`set_rng_state`); continue
    training with ``net.partial_fit(X, y)`` (``fit`` would start over unless
    ``warm_start=True``): on the same device the resumed epochs are bit for bit those of the
    uninterrupted run.

    Parameters
    ----------
    net : RobustAttributionClassifier
        Constructed like the saved one; initialised here if needed.
    dirname : str or path-like
        A checkpoint root (the newest complete checkpoint is used) or one ``epoch_NNNN``
        folder.

    Returns
    -------
    net : the same estimator, restored.

    Raises
    ------
    FileNotFoundError
        No checkpoint under ``dirname``.
    pickle.UnpicklingError
        A ``.pt`` file holds anything but tensors and plain containers (a tampered file);
        nothing in it is executed.
    ValueError
        ``meta.json`` is not an attribshield checkpoint.
    """
    dirname = os.fspath(dirname)
    path = dirname if os.path.isfile(os.path.join(dirname, "meta.json")) else latest_checkpoint(dirname)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {dirname!r}")
    meta = _read_meta(path)
    if not net.initialized_:
        net.initialize()
    n_out = meta.get("n_outputs")
    if n_out is not None and net.__dict__.get("n_outputs_") != n_out:
        _resize_module(net, int(n_out))
    previous = net.torch_load_kwargs
    net.torch_load_kwargs = dict(_SAFE_LOAD)  # whatever the net says: never unpickle code
    try:
        use_st = meta["params"] == "params.safetensors"
        files = {}
        if os.path.isfile(os.path.join(path, "optimizer.pt")):
            files["f_optimizer"] = os.path.join(path, "optimizer.pt")
        if os.path.isfile(os.path.join(path, "criterion.pt")):
            files["f_criterion"] = os.path.join(path, "criterion.pt")
        net.load_params(f_params=os.path.join(path, meta["params"]), use_safetensors=use_st)
        net.load_params(f_history=os.path.join(path, "history.json"), **files)
    finally:
        net.torch_load_kwargs = previous
    _restore_extras(net, path)
    _restore_rng(net, path)
    if meta.get("classes") is not None and getattr(net, "classes", None) is None:
        net.classes_inferred_ = np.asarray(meta["classes"])
    if meta.get("n_features_in") is not None:
        net.n_features_in_ = int(meta["n_features_in"])
    return net


def _resize_module(net, n_outputs):
    """Re-create module, criterion and optimizer with ``num_classes=n_outputs``."""
    net.n_outputs_ = n_outputs
    net._initialize_module(reason=None)
    net._initialize_criterion(reason=None)
    net._initialize_optimizer(reason=None)
    if hasattr(net, "_initialize_accelerator"):
        net._wrapped_with_accelerator = False
        net._initialize_accelerator()


class SafeCheckpoint(Checkpoint):
    """skorch callback saving a safe, atomic checkpoint (see :func:`save_checkpoint`).

    Resume with skorch's ``LoadInitState(checkpoint)``: it restores parameters, optimizer and
    history through ``net.load_params``, always with ``weights_only=True`` loading; this
    callback then restores the mask cache, a trainable explainer's state and the random
    generators' states (:func:`rng_state`) at the first epoch of the resumed run.  Random
    numbers drawn by callbacks listed after this one at the end of an epoch are not part of
    the saved state: list it after any callback that draws from a shared generator.

    Parameters
    ----------
    dirname : str or path-like
        Checkpoint root.
    monitor : str, callable or None, default=None
        When to save, as in ``skorch.callbacks.Checkpoint``; ``None``: after every epoch.
    every : int, default=1
        Save only every this many epochs (combined with ``monitor``).
    keep : int or None, default=2
        Newest checkpoints kept on disk.
    use_safetensors : bool, default=False
        Module parameters as safetensors.  ``LoadInitState`` cannot mix formats: resume such
        checkpoints with :func:`load_checkpoint`.
    event_name : str or None, default="event_cp"
        History key recording whether a checkpoint was saved.
    sink : callable, default=noop
        Receives a message after each save.

    Examples
    --------
    >>> from skorch.callbacks import LoadInitState
    >>> cp = SafeCheckpoint(dirname="runs/cp")                       # doctest: +SKIP
    >>> clf = RobustAttributionClassifier(..., callbacks=[cp, LoadInitState(cp)])  # doctest: +SKIP
    """

    def __init__(self, dirname, monitor=None, every=1, keep=2, use_safetensors=False, event_name="event_cp",
                 sink=noop):
        super().__init__(monitor=monitor, f_params="params.pt", f_optimizer="optimizer.pt", f_criterion=None,
                         f_history="history.json", dirname=os.fspath(dirname), event_name=event_name, sink=sink)
        self.every = every
        self.keep = keep
        # skorch's Checkpoint cannot store the optimizer with safetensors; save_checkpoint
        # uses safetensors for the parameters only, so the flag is set after its checks
        self.use_safetensors = use_safetensors

    _parameter_constraints = {"every": [Integral(1, None)], "keep": [None, Integral(1, None)]}

    def initialize(self):
        validate_params(self)
        self.pending_cache_ = False
        self.loaded_ = False
        return super().initialize()

    def on_train_begin(self, net, **kwargs):
        self.pending_cache_ = True

    def on_epoch_begin(self, net, **kwargs):
        # LoadInitState has run by now (whatever the callback order): restore the mask cache
        # and the explainer state that belong to the loaded parameters, unless the net has
        # its own already (load_checkpoint restored them, or training continues in-process),
        # and, when LoadInitState loaded this checkpoint, the random generators' states.
        if not self.pending_cache_:
            return
        self.pending_cache_ = False
        loaded, self.loaded_ = self.loaded_, False
        if len(net.history) <= 1:
            return
        path = latest_checkpoint(self.dirname)
        if path is None or _read_meta(path)["epoch"] != len(net.history) - 1:
            return
        if getattr(net, "mask_cache_", None) is None:
            _restore_extras(net, path)
        if loaded:
            _restore_rng(net, path)

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) % self.every == 0:
            return super().on_epoch_end(net, **kwargs)
        if self.event_name is not None:
            net.history.record(self.event_name, False)

    def save_model(self, net):
        save_checkpoint(net, self.dirname, use_safetensors=self.use_safetensors, keep=self.keep)

    # -- what LoadInitState / net.load_params(checkpoint=self) read --------------------
    def _latest_or_missing(self):
        return latest_checkpoint(self.dirname) or os.path.join(self.dirname, "no-checkpoint-yet")

    @property
    def f_history_(self):
        return os.path.join(self._latest_or_missing(), "history.json")

    def get_formatted_files(self, net):
        kwargs = getattr(net, "torch_load_kwargs", None)
        if kwargs is not None and not kwargs.get("weights_only", True):
            raise ValueError("SafeCheckpoint refuses to load with torch_load_kwargs weights_only=False: that "
                             "would let a tampered checkpoint run code")
        path = self._latest_or_missing()
        self.loaded_ = True  # net.load_params(checkpoint=self), as LoadInitState calls it
        files = {"f_params": os.path.join(path, "params.pt"), "f_optimizer": os.path.join(path, "optimizer.pt")}
        if os.path.isfile(os.path.join(path, "criterion.pt")):
            files["f_criterion"] = os.path.join(path, "criterion.pt")
        return files
