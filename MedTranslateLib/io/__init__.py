"""Volume input/output: read and validate volumes and masks, write them atomically (files or DICOM).

Names load lazily, so importing :mod:`MedTranslateLib.io` (or its light ``atomic`` module) does not pull in
SimpleITK until a volume function is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "atomic_output": "atomic", "check_writable": "atomic", "ensure_not_input": "atomic", "is_dicom_output": "atomic",
    "FILE_SUFFIXES": "atomic", "find_volume": "atomic", "output_group": "atomic",
    "MAX_VOXELS": "volumes", "SourceInfo": "source", "read_mask": "volumes", "read_volume": "volumes",
    "validate_volume": "volumes", "write_volume": "volumes", "write_dicom_series": "dicom",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from MedTranslateLib.io.atomic import (
        FILE_SUFFIXES, atomic_output, check_writable, ensure_not_input, find_volume, is_dicom_output,
        output_group,
    )
    from MedTranslateLib.io.dicom import write_dicom_series
    from MedTranslateLib.io.volumes import (
        MAX_VOXELS, read_mask, read_volume, validate_volume, write_volume,
    )
    from MedTranslateLib.io.source import SourceInfo


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'MedTranslateLib.io' has no attribute {name!r}")
    value = getattr(import_module(f"MedTranslateLib.io.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
