"""Where user models live and how large a weights file may be (shared by the registry, packages and downloads)."""

from __future__ import annotations

import os
from pathlib import Path

#: Largest weights file accepted (also the download cap).
MAX_WEIGHTS_BYTES = 2 * 1024**3


def user_models_dir() -> Path:
    """The user's model folder: ``MEDTRANSLATE_MODELS_DIR`` if set, else the platform's user data folder."""
    env = os.environ.get("MEDTRANSLATE_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("MedTranslate")) / "models"
