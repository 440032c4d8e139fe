"""Model cards, packages, the registry, export, import and download of weights.

Light to import: torch and safetensors are only imported when weights are read or written.
"""

from MedTranslateLib.models.card import ModelCard, load_card, validate_card
from MedTranslateLib.models.package import ModelPackage, open_package
from MedTranslateLib.models.registry import ModelRegistry, RegistryEntry, user_models_dir

__all__ = [
    "ModelCard", "ModelPackage", "ModelRegistry", "RegistryEntry", "load_card",
    "open_package", "user_models_dir", "validate_card",
]
