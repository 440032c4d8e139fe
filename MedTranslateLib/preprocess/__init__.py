"""Preprocessing: recorded, exactly invertible steps between an input volume and the model grid.

``prepare(image, card, mask)`` -> :class:`Prepared` (normalised float32 array, body mask, record);
``restore(array, record, spec, background)`` -> the prediction on the input's exact grid.
Heavy libraries (SimpleITK, scikit-image) are imported inside the functions that need them.
"""

from __future__ import annotations

from MedTranslateLib.preprocess.body_mask import BodyMaskFallbackWarning, body_mask
from MedTranslateLib.preprocess.modality import check_modality, guess_modality
from MedTranslateLib.preprocess.normalization import denormalize, normalize
from MedTranslateLib.preprocess.prepare import (PrepRecord, Prepared, automatic_body, in_model_orientation, prepare,
                                                on_input_grid, prepare_pair, restore, restore_array)

__all__ = [
    "BodyMaskFallbackWarning", "PrepRecord", "Prepared", "automatic_body", "body_mask", "check_modality",
    "denormalize", "guess_modality", "in_model_orientation", "normalize", "on_input_grid", "prepare",
    "prepare_pair", "restore", "restore_array",
]
