"""ITK's errors and warnings, made fit for a user: the reason of an exception without C++ file names, object
addresses or ``itk::ERROR`` prefixes, and ITK's warning printout silenced where MedTranslate says it better."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

#: ``itk::ERROR: NrrdImageIO(0x5556...): ReadImageInformation: `` and ``ITK ERROR: MetaImageIO(0x...): ``
_PREFIX = re.compile(r"^.*?(?:s?itk::ERROR|ITK ERROR):\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(?:\w+:\s+(?=\S))?")
_ADDRESS = re.compile(r"\s*\(0x[0-9a-fA-F]+\)")


def itk_reason(exc: Exception) -> str:
    """The most telling line of an ITK exception, shortened: teem's own last ``[nrrd]`` line for NRRD files, else
    the last error line without its ``itk::ERROR: Class(0x...): Method:`` prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    teem = [ln for ln in lines if ln.startswith("[nrrd]")]
    if teem:
        reason = re.sub(r"^\[nrrd\]\s*\w+:\s*", "", teem[-1])
    else:
        reason = next((ln for ln in reversed(lines) if "ITK ERROR" in ln or "error" in ln.lower()),
                      lines[-1] if lines else "")
        reason = _PREFIX.sub("", reason)
    return _ADDRESS.sub("", reason).strip()[:200]


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's warnings are not printed inside this block (e.g. GDCM's "No Series were found", which the caller
    reports as one clear error of its own); the earlier setting is put back after it."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
