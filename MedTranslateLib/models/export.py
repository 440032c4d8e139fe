"""Writing model packages (``model.json`` + ``weights.safetensors`` + ``README.md``), atomically, and converting
legacy ``.pt`` state-dict checkpoints into packages."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from MedTranslateLib.errors import ModelError, OutputError
from MedTranslateLib.io.atomic import swap_into_place
from MedTranslateLib.io.path_checks import staging_prefix
from MedTranslateLib.models.card import validate_card

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "weights.safetensors"


def _prepare_tensors(state_dict: Mapping[str, "torch.Tensor"], half: bool) -> tuple[dict[str, "torch.Tensor"], str]:
    import torch

    if not state_dict:
        raise ModelError("There are no tensors to export.", "Pass the trained networks' state dict.")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"The state dict entry {name!r} is not a named tensor.",
                             "Export a flat {name: tensor} dict (families.base.pack_state).")
        tensor = value.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensors[name] = tensor.contiguous().clone()
    floating = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    dtype = "float16" if half else (floating.pop() if len(floating) == 1 else "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        dtype = "float32"
    return tensors, dtype


def as_shipped(state_dict: Mapping[str, "torch.Tensor"], half: bool) -> dict[str, "torch.Tensor"]:
    """The values a package exported with ``half`` gives back when loaded (floating tensors rounded through
    float16, in their own dtype), so held-out metrics describe the weights that are shipped."""
    if not half:
        return dict(state_dict)
    tensors, _ = _prepare_tensors(state_dict, half)  # the export's own rounding
    return {name: tensor.to(state_dict[name].dtype) for name, tensor in tensors.items()}


def _zip_destination(destination: Path) -> Path:
    return destination if destination.suffix.lower() == ".zip" else destination.with_name(destination.name + ".zip")


def export_package(state_dict: Mapping[str, "torch.Tensor"], card: Mapping[str, Any], destination: str | Path, *,
                   half: bool = False, as_zip: bool = False) -> Path:
    """Write a model package and return its path (a folder, or ``<destination>.zip`` with ``as_zip``).

    The weights are saved with safetensors (float16 floating tensors when ``half``); their size and SHA256
    are written into the card, which is validated before anything lands at ``destination``. An existing
    package at ``destination`` is replaced; any other existing file or non-empty folder is refused.
    """
    from safetensors.torch import save

    tensors, dtype = _prepare_tensors(state_dict, half)
    data = save(tensors)
    full = copy.deepcopy(dict(card))
    weights = dict(full.get("weights") or {})
    weights.update({"file": weights.get("file", WEIGHTS_FILE), "sha256": hashlib.sha256(data).hexdigest(),
                    "size_bytes": len(data), "dtype": dtype})
    full["weights"] = weights
    validated = validate_card(full, source="being exported")
    target = Path(destination)
    final = _zip_destination(target) if as_zip else target
    _check_replaceable(final)
    staging: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(final.name), dir=final.parent))
        files = {
            "model.json": (json.dumps(full, indent=2) + "\n").encode("utf-8"),
            weights["file"]: data,
            "README.md": validated.describe().encode("utf-8"),
        }
        if as_zip:
            temp_zip = staging / final.name
            with zipfile.ZipFile(temp_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, content in files.items():
                    archive.writestr(name, content)
            swap_into_place(temp_zip, final)
        else:
            package_dir = staging / "package"
            package_dir.mkdir()
            for name, content in files.items():
                (package_dir / name).write_bytes(content)
            swap_into_place(package_dir, final)
    except OSError as exc:
        raise OutputError(f"Cannot write the model package {final}: {exc.strerror or exc}.",
                          "Check that the folder is writable and has free space.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def check_export_destination(destination: str | Path, as_zip: bool = False) -> Path:
    """Raise :class:`OutputError` unless a package can be exported to ``destination`` (its folder is created):
    checked before a training run, not after it. Returns the final path."""
    from MedTranslateLib.io.atomic import check_folder_writable

    final = _zip_destination(Path(destination)) if as_zip else Path(destination)
    _check_replaceable(final)
    # the nearest existing folder above: the export creates the missing ones (a run refused later leaves none)
    existing = next(path for path in final.absolute().parents if path.exists() or path.is_symlink())
    if not existing.is_dir():
        raise OutputError(f"Cannot create the folder {final.parent} for the package: {existing} is not a folder.",
                          "Choose an output path in a folder you can write to.")
    check_folder_writable(existing, f"the package {final}")
    return final


def _check_replaceable(final: Path) -> None:
    if not final.exists():
        return
    if final.is_dir():
        if any(final.iterdir()) and not (final / "model.json").is_file():
            raise OutputError(f"{final} exists and is not a model package; it will not be overwritten.",
                              "Choose a new output folder.")
    elif final.suffix.lower() != ".zip":
        raise OutputError(f"{final} exists and is not a package zip; it will not be overwritten.",
                          "Choose a new output path.")


def import_legacy_checkpoint(pt_path: str | Path, card_dict: Mapping[str, Any], destination: str | Path, *,
                             half: bool = False, as_zip: bool = False) -> Path:
    """Convert a legacy ``.pt`` checkpoint holding a flat ``{name: tensor}`` state dict into a package.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary code); anything that is not a flat
    dict of tensors (optimisers, nested dicts, whole modules) is refused.
    """
    import pickle

    import torch

    path = Path(pt_path)
    if not path.is_file():
        raise ModelError(f"No checkpoint at {path}.", "Give the path of a .pt / .pth state-dict file.")
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError) as exc:
        raise ModelError(f"{path} cannot be read as a safe tensor checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}).",
                         "Save a plain state dict with torch.save(model.state_dict(), path) and convert that.") from None
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelError(f"{path} does not hold a state dict (got {type(loaded).__name__}).",
                         "Save a plain state dict with torch.save(model.state_dict(), path).")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path} is not a flat tensor dict: entries {', '.join(bad[:5])} are not tensors.",
                         "Extract the network's state dict (e.g. checkpoint['model']) and save it alone.")
    return export_package(dict(loaded), card_dict, destination, half=half, as_zip=as_zip)
