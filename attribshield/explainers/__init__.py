"""Explainers: batched LIME, the ``lime`` reference adapter and segmenters."""
from ._attribution import Attribution
from ._lime_math import fill_segments, lime_kernel, segment_means, weighted_ridge
from ._model import fuse_conv_bn
from ._quantize import int8_available, quantize_int8
from ._sampling import SAMPLINGS, draw_masks
from .amortized import AmortizedLimeExplainer
from .gradient import GradientExplainer
from .lime import LimeExplainer
from .reference import LimeReferenceExplainer
from .segmentation import GridSegmenter, QuickshiftSegmenter, SlicSegmenter, default_segmenter

__all__ = [
    "Attribution",
    "LimeExplainer",
    "GradientExplainer",
    "AmortizedLimeExplainer",
    "LimeReferenceExplainer",
    "GridSegmenter",
    "SlicSegmenter",
    "QuickshiftSegmenter",
    "default_segmenter",
    "fill_segments",
    "segment_means",
    "lime_kernel",
    "fuse_conv_bn",
    "quantize_int8",
    "int8_available",
    "weighted_ridge",
    "draw_masks",
    "SAMPLINGS",
]
