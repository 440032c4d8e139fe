"""Is the input the modality the model expects? A check from the intensities alone.

CT (and HU-calibrated CBCT) volumes contain air at about -1000 HU: around the body, in airways and
sinuses, or as the -1024 padding outside the field of view. MR intensities are arbitrary but essentially
never below about -200 (at most small negatives after bias correction). So:

- *clearly CT*: at least 1 % of the voxels below -500 and a minimum of -900 or less;
- *clearly MR*: fewer than 0.1 % of the voxels below -200.

Anything in between is left alone (no error): a wrong refusal is worse than a missed one.

A volume of a few whole values of 0 or more (at most ``LABEL_MAP_VALUES``) is no scan at all but a segmentation
or mask (BraTS's ``-seg`` file beside its contrasts), and is refused whatever the model expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from MedTranslateLib.errors import InputError

#: modalities in Hounsfield units (the one list; importing it stays light: numpy only)
CT_LIKE = frozenset({"CT", "CBCT"})
MR_LIKE = {"MR", "T1", "T1C", "T2", "FLAIR", "PD"}
_SAMPLES = 4_000_000
#: A volume of at most this many different whole values, none negative, is a label map, not a scan.
LABEL_MAP_VALUES = 16


@dataclass(frozen=True)
class IntensityEvidence:
    """What the intensities say: fractions of very negative voxels and robust statistics."""

    fraction_below_500: float
    fraction_below_200: float
    minimum: float
    body_median: float
    body_p99: float

    @property
    def clearly_ct(self) -> bool:
        return self.fraction_below_500 >= 0.01 and self.minimum <= -900.0

    @property
    def clearly_mr(self) -> bool:
        return self.fraction_below_200 < 0.001

    def describe(self) -> str:
        return (f"{100 * self.fraction_below_500:.1f} % of voxels below -500, minimum {self.minimum:g}, "
                f"body median {self.body_median:.4g}, body 99th percentile {self.body_p99:.4g}")


def _sample(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values).ravel()
    step = max(1, flat.size // _SAMPLES)
    return np.asarray(flat[::step], dtype=np.float32)


def intensity_evidence(array: np.ndarray, mask: np.ndarray | None = None) -> IntensityEvidence:
    """The statistics the modality decision is based on (a strided sample of very large volumes)."""
    whole = _sample(array)
    body = whole
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape == np.shape(array) and mask.any():
            body = _sample(np.asarray(array)[mask])
    median, p99 = (float(v) for v in np.percentile(body, [50, 99]))
    return IntensityEvidence(
        fraction_below_500=float(np.mean(whole < -500.0)),
        fraction_below_200=float(np.mean(whole < -200.0)),
        minimum=float(np.min(array)),
        body_median=median,
        body_p99=p99,
    )


def guess_modality(array: np.ndarray, mask: np.ndarray | None = None) -> Literal["CT", "MR"]:
    """``"CT"`` when the volume looks like Hounsfield units (clear air near -1000), else ``"MR"``."""
    return "CT" if intensity_evidence(array, mask).clearly_ct else "MR"


def contradiction(array: np.ndarray, mask: np.ndarray | None, expected: str) -> tuple[str, IntensityEvidence] | None:
    """``("CT", evidence)`` when the intensities clearly say CT but ``expected`` is an MR contrast, ``("MR", ...)``
    when they clearly say MR but ``expected`` is CT or CBCT; None otherwise (and for modalities not checked: PET)."""
    expected = expected.upper()
    if expected not in CT_LIKE and expected not in MR_LIKE:
        return None
    evidence = intensity_evidence(array, mask)
    if expected in MR_LIKE and evidence.clearly_ct:
        return "CT", evidence
    if expected in CT_LIKE and evidence.clearly_mr:
        return "MR", evidence
    return None


def label_values(array: np.ndarray) -> np.ndarray | None:
    """The values of a volume that is a label map (at most ``LABEL_MAP_VALUES`` whole values, none negative), else
    None. A strided sample decides; only a volume it suspects is counted whole."""
    sample = np.unique(_sample(array))
    if sample.size > LABEL_MAP_VALUES or sample[0] < 0 or not np.array_equal(sample, np.round(sample)):
        return None
    values = np.unique(np.asarray(array))
    if values.size > LABEL_MAP_VALUES or not np.array_equal(values, np.round(values)):
        return None
    return values


def check_modality(array: np.ndarray, mask: np.ndarray | None, expected: str) -> None:
    """Raise :class:`InputError` when the input is a label map, or when its intensities clearly say it is not
    ``expected`` (the model's source modality: CT, CBCT, MR, T1, T2, ...)."""
    labels = label_values(array)
    if labels is not None:
        shown = ", ".join(f"{v:g}" for v in labels)
        raise InputError(f"The input volume holds only {labels.size} different value{'s' * (labels.size != 1)} "
                         f"({shown}): it looks like a segmentation or mask, not a scan.",
                         f"Give the {expected} scan itself; a label map cannot be translated.")
    found = contradiction(array, mask, expected)
    if found is None:
        return
    expected, (seen, evidence) = expected.upper(), found
    if seen == "CT":
        wanted = "an MR" if expected == "MR" else f"an MR ({expected})"
        raise InputError(
            f"The input looks like a CT in Hounsfield units ({evidence.describe()}), but this model "
            f"expects {wanted} volume.",
            f"Give the {expected} series of this patient; translating this CT needs a model whose source "
            "modality is CT, if one is installed (see the model list).",
        )
    raise InputError(
        f"The input looks like an MR, not a {expected} in Hounsfield units (no air near -1000: "
        f"{evidence.describe()}), but this model expects {expected}.",
        f"Give the {expected} series of this patient (a CBCT must be calibrated to Hounsfield units, air about "
        "-1000); translating this MR needs a model whose source modality is MR, if one is installed (see the "
        "model list).",
    )


def check_training_modality(array: np.ndarray, mask: np.ndarray | None, expected: str, what: str) -> None:
    """Raise :class:`InputError` when a training volume's intensities clearly contradict the modality the config
    gives it (swapped source and target, a CT stored as 0-4095, a label map as the target). ``what`` names the
    volume in the message ("target /data/1PA001/ct.nii.gz")."""
    found = contradiction(array, mask, expected)
    if found is None:
        return
    expected, (seen, evidence) = expected.upper(), found
    if seen == "CT":
        raise InputError(f"The {what} looks like a CT in Hounsfield units ({evidence.describe()}), but the training "
                         f"config says it is {expected}.",
                         "Check source_modality / target_modality and the files (are source and target swapped?), "
                         "or leave this case out.")
    raise InputError(f"The {what} has no air near -1000 ({evidence.describe()}): it is not a {expected} in "
                     "Hounsfield units.",
                     "Convert it to HU (a CT stored as 0-4095 needs 1024 subtracted; attenuation values and label "
                     "maps cannot be used), check that source and target are not swapped, or leave this case out.")
