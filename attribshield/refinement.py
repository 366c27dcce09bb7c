"""The closed loop: re-explain training images with the current model, cache spurious masks.

:class:`Refinement` is a skorch callback that every ``net.refine_every`` epochs explains a
rotating share (``net.refine_fraction``) of the training images with the current model,
asks the masker for their spurious segments and stores them in a :class:`MaskCache` keyed
by sample index, so shuffling, batching and validation splits stay correct.  The training
step reads the cache for each batch (``RobustAttributionClassifier.train_step_single``).
"""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import torch
from skorch.callbacks import Callback
from torch.utils.data import Subset

from .base import eval_mode
from .dataset import IndexedDataset
from .evaluation.stability import segment_spearman, topk_intersection
from .explainers import LimeExplainer
from .explainers.segmentation import default_segmenter

__all__ = ["MaskCache", "Refinement", "ExplanationAudit"]


class MaskCache:
    """Per-sample segments and spurious-segment selections, kept on the CPU.

    Parameters
    ----------
    n_samples : int
        Size of the (full) training set; indices are dataset positions.
    height, width : int
        Image size.

    Attributes
    ----------
    segments : torch.Tensor of shape (n_samples, H, W), int16
    selected : torch.Tensor of shape (n_samples, S_max), bool
    explained : torch.Tensor of shape (n_samples,), bool
        Which samples have a (current) selection.
    round_of : torch.Tensor of shape (n_samples,), int32
        The refinement round (1-based) that made each sample's selection.
    cursor : int
        Where the next rotating refinement round starts.
    rounds : int
        Completed refinement rounds.
    """

    def __init__(self, n_samples: int, height: int, width: int):
        self.segments = torch.zeros((n_samples, height, width), dtype=torch.int16)
        self.selected = torch.zeros((n_samples, 1), dtype=torch.bool)
        self.explained = torch.zeros(n_samples, dtype=torch.bool)
        self.round_of = torch.zeros(n_samples, dtype=torch.int32)
        self.cursor = 0
        self.rounds = 0

    def __len__(self):
        return int(self.explained.shape[0])

    def update(self, index: torch.Tensor, segments: torch.Tensor, selected: torch.Tensor) -> None:
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        S = selected.shape[1]
        if S > self.selected.shape[1]:
            pad = torch.zeros((len(self), S - self.selected.shape[1]), dtype=torch.bool)
            self.selected = torch.cat([self.selected, pad], dim=1)
        self.segments[index] = segments.to("cpu", torch.int16)
        self.selected[index] = False
        self.selected[index, :S] = selected.cpu()
        self.explained[index] = True
        self.round_of[index] = self.rounds + 1  # the round in progress

    def expire(self, max_age: int) -> int:
        """Forget selections made more than ``max_age`` rounds ago; returns how many."""
        old = self.explained & (self.round_of <= self.rounds - max_age)
        self.explained[old] = False
        return int(old.sum())

    def batch(self, index, device):
        """``(segments (B,H,W) long, selected (B,S) bool, explained (B,) bool)`` on ``device``."""
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        return (self.segments[index].to(device, torch.long), self.selected[index].to(device),
                self.explained[index].to(device))

    def state_dict(self) -> dict:
        return {"segments": self.segments, "selected": self.selected, "explained": self.explained,
                "round_of": self.round_of, "cursor": torch.tensor(self.cursor), "rounds": torch.tensor(self.rounds)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "MaskCache":
        n, h, w = state["segments"].shape
        cache = cls(n, h, w)
        cache.segments = state["segments"].to(torch.int16)
        cache.selected = state["selected"].bool()
        cache.explained = state["explained"].bool()
        if "round_of" in state:
            cache.round_of = state["round_of"].to(torch.int32)
        cache.cursor = int(state["cursor"])
        cache.rounds = int(state["rounds"])
        return cache

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path) -> "MaskCache":
        # weights_only: a cache file holds tensors only, so loading cannot run code
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _base_dataset(dataset):
    """Unwrap ``Subset`` layers: ``(base dataset, positions in it)``."""
    positions = np.arange(len(dataset))
    while isinstance(dataset, Subset):
        positions = np.asarray(dataset.indices)[positions]
        dataset = dataset.dataset
    return dataset, positions


def _gather(dataset, positions):
    """Images, labels and dataset indices of ``positions``."""
    if hasattr(dataset, "gather"):
        return dataset.gather(positions)
    return IndexedDataset(dataset).gather(positions)


class Refinement(Callback):
    """Re-explain training images every ``net.refine_every`` epochs and cache their masks.

    Active only when the net has a ``masker_`` and ``refine_mode="rounds"``.  The settings of
    the loop are the estimator's parameters (one place): ``refine_every``, ``refine_fraction``,
    ``refine_max_rounds`` and ``refine_max_age``.  The explanation budget per round is
    ``refine_fraction`` of the training set (rotating, so every image is covered over
    ``ceil(1 / refine_fraction)`` rounds) times the explainer's ``n_samples``.  Each round
    records ``refine_dur`` (seconds) and ``refine_n`` (images explained) in the epoch's
    history row, which skorch's printed table shows.  The cache is saved with every
    checkpoint by :class:`~attribshield.checkpoint.SafeCheckpoint`.

    Parameters
    ----------
    chunk_size : int, default=256
        Images explained at once (bounds memory).
    progress : bool or None, default=None
        tqdm progress bar over the chunks; ``None``: when the net is verbose.
    dirname, max_rounds, max_age
        Deprecated: save the cache with :class:`~attribshield.checkpoint.SafeCheckpoint`, and
        set the estimator's ``refine_max_rounds`` / ``refine_max_age``.  When given they still
        act as before, with a ``FutureWarning``; they will be removed in the next release.
    """

    def __init__(self, chunk_size=256, dirname=None, progress=None, max_rounds="deprecated", max_age="deprecated"):
        self.chunk_size = chunk_size
        self.dirname = dirname
        self.progress = progress
        self.max_rounds = max_rounds
        self.max_age = max_age

    def initialize(self):
        for name, unset, instead in (("dirname", None, "SafeCheckpoint(dirname), which stores the cache with "
                                      "each checkpoint"),
                                     ("max_rounds", "deprecated", "the estimator's refine_max_rounds"),
                                     ("max_age", "deprecated", "the estimator's refine_max_age")):
            if getattr(self, name) != unset:
                warnings.warn(f"Refinement({name}=...) is deprecated and will be removed in the next release; "
                              f"use {instead}", FutureWarning, stacklevel=2)
        return super().initialize()

    def _setting(self, net, name):
        own = getattr(self, name)
        return getattr(net, f"refine_{name}") if own == "deprecated" else own

    def _path(self):
        return None if self.dirname is None else os.path.join(self.dirname, "mask_cache.pt")

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        path = self._path()
        if getattr(net, "mask_cache_", None) is None and path is not None and os.path.exists(path):
            net.mask_cache_ = MaskCache.load(path)

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if getattr(net, "masker_", None) is None or dataset_train is None:
            return
        if getattr(net, "refine_mode", "rounds") != "rounds":  # online masks need no rounds
            return
        epoch = len(net.history)
        if epoch % net.refine_every != 0:
            return
        cache = getattr(net, "mask_cache_", None)
        max_rounds = self._setting(net, "max_rounds")
        if max_rounds is not None and cache is not None and cache.rounds >= max_rounds:
            return
        t0 = time.perf_counter()
        n = self.refine(net, dataset_train)
        dur = time.perf_counter() - t0
        net.history.record("refine_dur", dur)
        net.history.record("refine_n", n)

    def refine(self, net, dataset_train) -> int:
        """One refinement round; returns the number of images explained."""
        base, positions = _base_dataset(dataset_train)
        n_train = len(positions)
        cache = getattr(net, "mask_cache_", None)
        if cache is None or len(cache) != len(base):
            X0 = _gather(base, positions[:1])[0]
            cache = MaskCache(len(base), X0.shape[-2], X0.shape[-1])
        n_round = max(1, int(math.ceil(net.refine_fraction * n_train)))
        order = (cache.cursor + np.arange(n_round)) % n_train
        cache.cursor = int((cache.cursor + n_round) % n_train)
        chunks = range(0, n_round, self.chunk_size)
        show = net.verbose > 0 if self.progress is None else self.progress
        if show:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"refine (epoch {len(net.history)})", leave=False,
                          total=math.ceil(n_round / self.chunk_size))
        module = net.module_
        for start in chunks:
            pos = positions[order[start:start + self.chunk_size]]
            X, y, idx = _gather(base, pos)
            X = X.to(net.device)
            y = net.encode_labels(torch.as_tensor(y, device=net.device).long())
            sel = net.masker_.find_spurious(module, X, y, net.explainer_, attacker=net.attacker_)
            cache.update(idx, sel.segments, sel.selected)
        cache.rounds += 1
        max_age = self._setting(net, "max_age")
        if max_age is not None:
            cache.expire(max_age)
        net.mask_cache_ = cache
        path = self._path()
        if path is not None:
            os.makedirs(self.dirname, exist_ok=True)
            cache.save(path)
        return n_round


def segments_for(explainer, X: torch.Tensor) -> torch.Tensor:
    """Segment maps ``(N, H, W)`` of ``X`` from ``explainer.segmenter`` (default: the 4x4 grid)."""
    segmenter = getattr(explainer, "segmenter", None)
    if segmenter is None:
        segmenter = default_segmenter(X.shape[-2], X.shape[-1])
    return segmenter.segment(X).to(X.device).long()


class ExplanationAudit(Callback):
    """After every epoch, compare the online explainer with exact LIME on a rotating subset.

    Active when the net trains with ``refine_mode="online"``, a masker and ``audit_size > 0``.
    Explains ``net.audit_size`` training images (the next ones in a rotation, un-augmented)
    for their true classes with ``net.explainer_`` and with exact LIME
    (:class:`~attribshield.explainers.LimeExplainer`, ``net.audit_samples`` samples, foldover
    design, the same segments), and records in the epoch's history row:

    * ``audit_spearman``: median Spearman correlation of the segment weights;
    * ``audit_top3``: mean overlap of the top-3 segments (0..1);
    * ``audit_dur``: seconds the audit took (not part of the training step).
    """

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if (getattr(net, "refine_mode", "rounds") != "online" or getattr(net, "masker_", None) is None
                or dataset_train is None or not net.audit_size):
            return
        t0 = time.perf_counter()
        base, positions = _base_dataset(dataset_train)
        n = min(int(net.audit_size), len(positions))
        cursor = int(getattr(net, "audit_cursor_", 0))
        order = (cursor + np.arange(n)) % len(positions)
        net.audit_cursor_ = int((cursor + n) % len(positions))
        X, y, _ = _gather(base, positions[order])
        X = X.to(net.device)
        y = net.encode_labels(torch.as_tensor(y, device=net.device).long())
        module = net.module_
        segments = segments_for(net.explainer_, X)
        exact = LimeExplainer(n_samples=int(net.audit_samples), sampling="foldover", random_state=0,
                              channels_last=bool(net.channels_last), autocast=net.autocast or None)
        with eval_mode(module):
            att = net.explainer_.explain(module, X, y, segments=segments)
            ref = exact.explain(module, X, y, segments=segments)
        valid = ref.valid.cpu().numpy()
        rho = segment_spearman(att.weights.detach().cpu().numpy(), ref.weights.cpu().numpy(), valid)
        top = topk_intersection(att.weights.detach().cpu().numpy(), ref.weights.cpu().numpy(), 3, valid)
        finite = rho[np.isfinite(rho)]  # constant weights (e.g. an untrained explainer) have no rank
        net.history.record("audit_spearman", float(np.median(finite)) if finite.size else float("nan"))
        net.history.record("audit_top3", float(np.mean(top)))
        net.history.record("audit_dur", time.perf_counter() - t0)
