"""Maskers: find the segments a model relies on spuriously, and hide them.

:class:`LimeMasker` scores segments from LIME explanations (``'unstable'``, ``'irrelevant'``,
``'combined'`` or ``'dominant'``), selects the top-k per image (or a threshold), and fills
them (segment mean colour, a constant, a blurred copy or noise).  :class:`RandomMasker` masks
as many segments chosen at random (the control for attribution guidance).
:func:`pixel_mask` turns a per-segment selection into the ``(N, 1, H, W)`` mask the training
step and the regularizers use.
"""
from .fill import FILLS, fill_image, gaussian_blur, masked_region_mean, pixel_mask
from .lime_masker import CRITERIA, LimeMasker, SpuriousSelection
from .oracle import OracleAttribution, OracleExplainer, OracleMasker, detect_patch
from .random_masker import RandomMasker

__all__ = [
    "LimeMasker",
    "RandomMasker",
    "OracleMasker",
    "OracleExplainer",
    "OracleAttribution",
    "detect_patch",
    "SpuriousSelection",
    "pixel_mask",
    "fill_image",
    "gaussian_blur",
    "masked_region_mean",
    "CRITERIA",
    "FILLS",
]
