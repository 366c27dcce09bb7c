"""The original ``lime`` package behind attribshield's explainer protocol.

:class:`LimeReferenceExplainer` runs ``lime.lime_image.LimeImageExplainer`` image by image
(slow: one Python loop per sample, about 0.4 s per 32x32 image at 1,000 samples with a small
CNN on a CPU) and returns the same :class:`~attribshield.explainers.Attribution` as
:class:`~attribshield.explainers.LimeExplainer`.  It is the reference the tests compare against
and an option for users who want the original implementation.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .._params import Integral, Real, validate_params
from .._validation import check_labels
from ..base import Component, eval_mode
from ._attribution import Attribution
from ._model import _checked_logits, _is_int, _module_and_images
from .segmentation import default_segmenter

__all__ = ["LimeReferenceExplainer"]


@contextlib.contextmanager
def _quiet_lime():
    """Silence ``lime_image``'s per-image progress bar for the block."""
    from lime import lime_image

    saved = lime_image.tqdm
    lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield lime_image
    finally:
        lime_image.tqdm = saved


class LimeReferenceExplainer(Component):
    """``lime.lime_image`` with attribshield's ``explain`` protocol.

    Parameters
    ----------
    n_samples : int, default=1000
        ``num_samples`` of ``explain_instance``.
    segmenter : Component or None, default=None
        Object with ``segment(X)``; ``None``: the same 4x4 grid as :class:`LimeExplainer`
        (pass ``QuickshiftSegmenter()`` for ``lime``'s own default).
    hide_color : None or float, default=None
        ``None``: segment-mean fill (``lime``'s default).
    kernel_width : float, default=0.25
    batch_size : int, default=10
        Images per ``classifier_fn`` call (``lime``'s default is 10).
    random_state : None or int, default=None
        Seed of ``lime``'s ``numpy.random.RandomState`` (one per ``explain`` call); with seed
        ``s`` the masks of every image are
        ``RandomState(s).randint(0, 2, n_samples * S_n).reshape(n_samples, S_n)`` with row 0
        set to ones (a fresh state per image).

    Notes
    -----
    Feature selection is off (``feature_selection="none"``), so the explanation is the
    alpha-1 weighted ridge on all segments, as with ``lime``'s defaults when all features
    are kept.
    """

    def __init__(self, n_samples=1000, segmenter=None, hide_color=None, kernel_width=0.25, batch_size=10,
                 random_state=None):
        self.n_samples = n_samples
        self.segmenter = segmenter
        self.hide_color = hide_color
        self.kernel_width = kernel_width
        self.batch_size = batch_size
        self.random_state = random_state

    _parameter_constraints = {
        "n_samples": [Integral(2, None)],
        "batch_size": [Integral(1, None)],
        "kernel_width": [Real(0, None, closed="neither")],
        "random_state": [None, Integral(0, None)],
    }

    def _validate_params(self):
        validate_params(self)

    def explain(self, model, X, target=None, *, segments=None) -> Attribution:
        """Explain ``model`` on ``X`` with ``lime``; same arguments and result as
        :meth:`LimeExplainer.explain` (without ``samples``).  Weights are float64."""
        self._validate_params()
        module, X, device = _module_and_images(model, X)
        n, c, h, w = X.shape
        with eval_mode(module), torch.no_grad():
            logits = _checked_logits(module, X)
            n_classes = logits.shape[1]
            if target is None:
                target = logits.argmax(1)
            else:
                if _is_int(target):
                    target = [int(target)] * n
                target = check_labels(target, n, name="target", n_classes=n_classes)
            target = torch.as_tensor(target, device=device).long()
            if segments is None:
                seg_t = (self.segmenter or default_segmenter(h, w)).segment(X).long()
            else:
                seg_t = torch.as_tensor(segments).long()
                if seg_t.ndim == 2:
                    seg_t = seg_t[None].expand(n, h, w)
                if tuple(seg_t.shape) != (n, h, w):
                    raise ValueError(f"segments must have shape ({n}, {h}, {w}), got {tuple(seg_t.shape)}")
            seg_np = seg_t.cpu().numpy()

            def classifier_fn(batch):
                t = torch.as_tensor(np.asarray(batch), device=device).permute(0, 3, 1, 2)
                if c == 1:
                    t = t[:, :1]
                t = t.to(X.dtype).contiguous()
                return torch.softmax(module(t).double(), 1).cpu().numpy()

            s_max = int(seg_np.max()) + 1
            weights = torch.zeros(n, s_max, dtype=torch.float64)
            valid = torch.zeros(n, s_max, dtype=torch.bool)
            intercept = torch.zeros(n, dtype=torch.float64)
            score = torch.zeros(n, dtype=torch.float64)
            images = X.detach().cpu().double().permute(0, 2, 3, 1).numpy()
            with _quiet_lime() as lime_image:
                for i in range(n):
                    rs = None if self.random_state is None else np.random.RandomState(int(self.random_state))
                    explainer = lime_image.LimeImageExplainer(
                        kernel_width=self.kernel_width, feature_selection="none", random_state=rs
                    )
                    img = images[i] if c != 1 else np.repeat(images[i], 3, axis=-1)
                    label = int(target[i])
                    exp = explainer.explain_instance(
                        img,
                        classifier_fn,
                        labels=(label,),
                        hide_color=self.hide_color,
                        top_labels=None,
                        num_features=s_max,
                        num_samples=int(self.n_samples),
                        batch_size=int(self.batch_size),
                        segmentation_fn=lambda _img, _s=seg_np[i]: _s,
                        random_seed=0,
                    )
                    for j, v in exp.local_exp[label]:
                        weights[i, j] = v
                    s_i = int(seg_np[i].max()) + 1
                    valid[i, :s_i] = True
                    intercept[i] = float(exp.intercept[label])
                    score[i] = float(exp.score)
        return Attribution(
            segments=seg_t.to(device),
            weights=weights.to(device),
            valid=valid.to(device),
            intercept=intercept.to(device),
            score=score.to(device),
            target=target,
        )
