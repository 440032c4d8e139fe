"""Install the backend's Python packages inside Slicer, only when first needed (asks the user first).

Listing the models needs only two small pure-Python packages Slicer does not ship (jsonschema, platformdirs);
translating needs torch and the rest. torch comes from the PyTorch extension (``PyTorchUtils``), never from a
plain pip install; the other packages via ``pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, Iterable

#: Import name -> requirement for the packages the worker needs besides torch (numpy, scipy and SimpleITK
#: ship with Slicer; they are listed for a Python that lacks them). The same specifiers as pyproject.toml's
#: dependencies (a test compares them); matplotlib draws only the command line's evaluation reports.
BACKEND_REQUIREMENTS = {
    "monai": "monai>=1.4", "SimpleITK": "SimpleITK>=2.3", "safetensors": "safetensors>=0.4",
    "jsonschema": "jsonschema>=4.18", "platformdirs": "platformdirs>=3", "scipy": "scipy>=1.10",
    "skimage": "scikit-image>=0.21", "sklearn": "scikit-learn>=1.3", "rich": "rich>=13",
    "pydicom": "pydicom>=2.4", "einops": "einops>=0.7",
}
#: What ``models list`` imports besides the standard library, numpy and scipy.
LISTING_MODULES = ("jsonschema", "platformdirs")
TORCH_REQUIREMENT = ">=2.4"


def _unsatisfied(requirement: str) -> bool:
    """True when the installed distribution's version does not meet ``requirement`` (a module without package
    metadata, as a package built into the application, counts as meeting it)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return False
    parsed = Requirement(requirement)
    try:
        installed = importlib.metadata.version(parsed.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return not parsed.specifier.contains(installed, prereleases=True)


def missing_requirements(modules: Iterable[str] | None = None) -> list[str]:
    """Requirements (of ``modules``, default all backend ones) whose module cannot be found in this Python, or
    whose installed version is too old (monai 1.3 imports but lacks the diffusion networks)."""
    importlib.invalidate_caches()  # packages installed since the last look must be found
    names = BACKEND_REQUIREMENTS if modules is None else modules
    return [BACKEND_REQUIREMENTS[name] for name in names
            if importlib.util.find_spec(name) is None or _unsatisfied(BACKEND_REQUIREMENTS[name])]


def torch_constraints(folder: str | Path) -> Path | None:
    """A pip constraints file pinning the installed torch, so that installing monai & co. never replaces the
    PyTorch extension's build (a newer monai would pull a CUDA build from PyPI); None without torch."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(folder) / "constraints.txt"
    path.write_text(f"torch=={version}\n", encoding="utf-8")
    return path


def _pip_ensure(missing: list[str], ask: bool) -> bool:
    """Install ``missing`` with Slicer's own tools, keeping the installed torch; False when the user declined."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    with tempfile.TemporaryDirectory(prefix="medtranslate-pip-") as folder:
        constraints = torch_constraints(folder)
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12: asks, raises if declined
            from packaging.requirements import Requirement

            try:
                packaging.pip_ensure([Requirement(req) for req in missing], constraints=constraints,
                                     prompt_install=ask, requester="MedTranslate")
            except RuntimeError:
                return False
        else:
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "MedTranslate needs these Python packages: " + ", ".join(missing) + ". Install them now?"):
                return False
            slicer.util.pip_install(list(missing) + (["-c", str(constraints)] if constraints else []))
    return True


def ensure_listing_packages(ask: bool = True) -> bool:
    """Make the packages that listing the models needs importable. False when the user declined."""
    missing = missing_requirements(LISTING_MODULES)
    if missing and not _pip_ensure(missing, ask):
        return False
    return not missing_requirements(LISTING_MODULES)


def ensure_backend_packages(ask: bool = True, before_install: Callable[[], None] | None = None) -> bool:
    """Make torch and the backend packages importable in Slicer's Python. False when the user declined.

    ``before_install`` is called first when something is to be installed or upgraded (the panel lets its standby
    worker go: it has the old packages loaded)."""
    if before_install is not None and (importlib.util.find_spec("torch") is None or missing_requirements()):
        before_install()
    if importlib.util.find_spec("torch") is None:
        import PyTorchUtils

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                          torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    missing = missing_requirements()
    if missing and not _pip_ensure(missing, ask):
        return False
    return not missing_requirements()
