"""Accuracy under common corruptions (CIFAR-10-C): a (corruption x severity) table."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

from .._params import Integral, check_param
from .._utils import check_batch_size, from_bits
from .._validation import check_labels
from ..base import get_module
from ..data.cifar10c import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from .robust import clean_accuracy

__all__ = ["corruption_accuracy", "corruption_records"]


def _default_corruptions():
    return tuple(CORRUPTIONS)


def corruption_accuracy(model, X, y, corruptions=None, severities=range(1, 6), random_state=0, *,
                        batch_size=256, progress=False, return_per_sample=False):
    """Accuracy on corrupted copies of ``X`` for every (corruption, severity) pair.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like of shape (N, 3, H, W), or mapping
        Clean images in [0, 1], corrupted on the fly with
        :func:`attribshield.data.cifar10c.corrupt`; or precomputed corrupted images as a
        mapping ``{(name, severity): array (N, 3, H, W)}`` (what
        :func:`attribshield.data.cifar10c.load_cifar10c` returns), in which case only the
        requested pairs are read.
    y : array-like of shape (N,)
        Labels (shared by every block).
    corruptions : sequence of str or None, default=None
        ``None``: the 15 benchmark corruptions (:data:`attribshield.data.cifar10c.CORRUPTIONS`);
        with a mapping ``X``, ``None`` means every corruption present in it.
    severities : iterable of int, default=range(1, 6)
        Severities 1..5.
    random_state : int or None, default=0
        Seed of the random corruptions; each (corruption, severity) pair gets its own seed
        derived from it, so a table entry does not depend on which others were computed.
    batch_size : int, default=256
    progress : bool, default=False
        tqdm progress bar over the (corruption, severity) blocks.
    return_per_sample : bool, default=False
        Also return each image's correctness in every block (``per_sample``), the record a
        paired test needs (:func:`corruption_records`).

    Returns
    -------
    result : dict
        ``table``: ``{name: {severity: accuracy}}``; ``mean``: mean over the whole table
        (the CIFAR-10-C benchmark number); ``per_corruption``: ``{name: mean over severities}``;
        ``per_severity``: ``{severity: mean over corruptions}``; ``corruptions`` and
        ``severities``: the axes, in order; with ``return_per_sample``, ``per_sample``:
        ``{name: {severity: bool array (N,)}}``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    >>> X, y = np.random.rand(4, 3, 32, 32).astype("float32"), np.arange(4)
    >>> res = corruption_accuracy(model, X, y, corruptions=["gaussian_noise"], severities=[1, 5])
    >>> sorted(res["table"]["gaussian_noise"])
    [1, 5]
    """
    get_module(model)
    batch_size = check_batch_size(batch_size, "corruption_accuracy")
    sevs = list(severities)
    if not sevs:
        raise ValueError("severities must not be empty")
    for s in sevs:
        check_param("corruption_accuracy", "severities entries", s, [Integral(1, 5)])
    sevs = [int(s) for s in sevs]
    precomputed = isinstance(X, Mapping)
    if corruptions is None:
        if precomputed:
            corruptions = list(dict.fromkeys(k[0] for k in X))
        else:
            corruptions = _default_corruptions()
    if isinstance(corruptions, str):
        raise ValueError(f"corruptions must be a sequence of names, got the string {corruptions!r}")
    corruptions = list(corruptions)
    if not corruptions:
        raise ValueError("corruptions must not be empty")
    if precomputed:
        missing = [(c, s) for c in corruptions for s in sevs if (c, s) not in X]
        if missing:
            raise ValueError(f"precomputed data lacks {len(missing)} (corruption, severity) pairs, "
                             f"e.g. {missing[:3]}")
        n = len(next(iter(X.values())))
        y = check_labels(y, n)
    else:
        known = set(CORRUPTIONS) | set(EXTRA_CORRUPTIONS)
        unknown = [c for c in corruptions if c not in known]
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {sorted(known)}")
        y = check_labels(y, len(X))
        X = np.asarray(X.detach().cpu().numpy() if hasattr(X, "detach") else X)
    check_param("corruption_accuracy", "random_state", random_state, [None, Integral(0, None)])
    table = {name: {} for name in corruptions}
    per_sample = {name: {} for name in corruptions}
    pairs = [(name, s) for name in corruptions for s in sevs]
    if progress:
        pairs = tqdm(pairs, desc="corruptions", unit="block")
    for name, s in pairs:
        if precomputed:
            Xc = X[name, s]
        else:
            # one independent stream per (corruption, severity), stable under subsetting
            seed = None if random_state is None else int(
                np.random.SeedSequence([int(random_state), _name_key(name), s]).generate_state(1)[0])
            Xc = corrupt(X, name, s, random_state=seed)
        ok = clean_accuracy(model, Xc, y, batch_size=batch_size, return_per_sample=True)
        per_sample[name][s] = np.asarray(ok, dtype=bool)
        table[name][s] = float(per_sample[name][s].mean())
    per_corruption = {c: float(np.mean([table[c][s] for s in sevs])) for c in corruptions}
    per_severity = {s: float(np.mean([table[c][s] for c in corruptions])) for s in sevs}
    mean = float(np.mean([table[c][s] for c in corruptions for s in sevs]))
    out = {"table": table, "mean": mean, "per_corruption": per_corruption, "per_severity": per_severity,
           "corruptions": corruptions, "severities": sevs}
    if return_per_sample:
        out["per_sample"] = per_sample
    return out


def corruption_records(result) -> np.ndarray:
    """One correctness record over every (corruption, severity, image) of a CIFAR-10-C result.

    Parameters
    ----------
    result : dict
        A :func:`corruption_accuracy` result with ``per_sample`` (bool arrays), or its JSON form
        in an evaluation report (``0``/``1`` strings, keys as strings).

    Returns
    -------
    numpy.ndarray of bool, shape (n_corruptions * n_severities * N,)
        Blocks in the order of ``result["corruptions"]`` x ``result["severities"]``; its mean
        is ``result["mean"]``.  Two models' records on the same images pair up for
        :func:`attribshield.evaluation.stats.mcnemar_exact`.

    Examples
    --------
    >>> import numpy as np, torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    >>> X, y = np.random.rand(4, 3, 32, 32).astype("float32"), np.arange(4)
    >>> res = corruption_accuracy(model, X, y, corruptions=["fog"], severities=[1, 2], return_per_sample=True)
    >>> rec = corruption_records(res)
    >>> rec.shape, bool(rec.mean() == res["mean"])
    ((8,), True)
    """
    per = result.get("per_sample")
    if per is None:
        raise ValueError("the result holds no per_sample records: run corruption_accuracy(..., "
                         "return_per_sample=True) (evaluate_model stores them)")
    blocks = []
    for name in result["corruptions"]:
        for s in result["severities"]:
            rec = per[name][s] if s in per[name] else per[name][str(s)]
            blocks.append(from_bits(rec) if isinstance(rec, str) else np.asarray(rec, dtype=bool))
    return np.concatenate(blocks)


def _name_key(name: str) -> int:
    """A stable integer for a corruption name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
