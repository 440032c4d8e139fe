"""Sample volumes the project makes itself (no download needed), reproducible to the byte.

The phantom is rendered with a fixed seed and stored as int16 NRRD without compression, so the file and
its SHA256 are the same on every machine; the Slicer module registers it in Sample Data with that checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: sample id -> (phantom seed, modality, file name)
SAMPLES: dict[str, tuple[int, str, str]] = {
    "phantom-t1": (1000, "T1", "MedTranslateHeadPhantomT1.nrrd"),
    "phantom-ct": (1000, "CT", "MedTranslateHeadPhantomCT.nrrd"),
}


def write_sample(sample: str, folder: str | Path) -> Path:
    """Render ``sample`` into ``folder`` (atomically) and return the file path."""
    import SimpleITK as sitk

    from MedTranslateLib.errors import ConfigError, OutputError
    from MedTranslateLib.io.itk_paths import itk_path
    from MedTranslateLib.phantom import make_head_phantom

    if sample not in SAMPLES:
        raise ConfigError(f"Unknown sample {sample!r}.", f"Choose one of {', '.join(SAMPLES)}.")
    seed, modality, name = SAMPLES[sample]
    image = make_head_phantom(seed=seed).modality(modality)
    rounded = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.tmp.nrrd"
    sitk.WriteImage(rounded, itk_path(tmp, OutputError), False)
    tmp.replace(path)
    return path


def cached_sample(sample: str, folder: str | Path, sha256: str) -> Path:
    """The file of ``sample`` in ``folder``: kept when its SHA256 is ``sha256``, else rendered again (Slicer calls
    this at every start, and rendering takes seconds)."""
    if sample in SAMPLES:
        path = Path(folder) / SAMPLES[sample][2]
        if path.is_file() and sha256_of(path) == sha256.lower():
            return path
    return write_sample(sample, folder)


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
