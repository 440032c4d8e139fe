"""Install the backend's Python packages inside Slicer, only when first needed (asks the user first).

torch comes from the PyTorch extension (``PyTorchUtils``), never from a plain pip install; the other
packages via ``pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install`` (older Slicer).
"""

from __future__ import annotations

import importlib.util

#: Import name -> requirement for the packages the worker needs besides torch.
BACKEND_REQUIREMENTS = {
    "monai": "monai>=1.4", "SimpleITK": "SimpleITK>=2.3", "safetensors": "safetensors>=0.4",
    "jsonschema": "jsonschema>=4.18", "platformdirs": "platformdirs>=3", "scipy": "scipy>=1.10",
    "skimage": "scikit-image>=0.21", "sklearn": "scikit-learn>=1.3", "rich": "rich>=13",
    "pydicom": "pydicom>=2.4",
}
TORCH_REQUIREMENT = ">=2.4"


def missing_requirements() -> list[str]:
    """Requirements whose module cannot be found in this Python."""
    return [req for module, req in BACKEND_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]


def ensure_backend_packages(ask: bool = True) -> bool:
    """Make torch and the backend packages importable in Slicer's Python. False when the user declined."""
    import slicer

    if importlib.util.find_spec("torch") is None:
        import PyTorchUtils

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                          torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    missing = missing_requirements()
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        from packaging.requirements import Requirement

        packaging.pip_ensure([Requirement(req) for req in missing], requester="MedTranslate")
    else:
        if ask and not slicer.util.confirmOkCancelDisplay(
                "MedTranslate needs these Python packages: " + ", ".join(missing) + ". Install them now?"):
            return False
        slicer.util.pip_install(" ".join(missing))
    return not missing_requirements()
