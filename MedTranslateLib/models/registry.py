"""The model registry: built-in packages (``MedTranslateLib/models/builtin/<id>/``) and the user's model folder
(``MEDTRANSLATE_MODELS_DIR`` or ``platformdirs.user_data_dir("MedTranslate")/models``); import, resolve, remove."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.card import MAX_CARD_BYTES, load_card
from MedTranslateLib.io.atomic import chmod_like_new, swap_into_place
from MedTranslateLib.models.paths import user_models_dir
from MedTranslateLib.models.package import (
    MAX_EXTRA_BYTES,
    ModelPackage,
    is_extra_file,
    read_file_capped,
    open_package,
)

BUILTIN_DIR = Path(__file__).with_name("builtin")
IMPORT_HINT = "Import a package with 'medtranslate models import FILE' or give a package folder / .zip path."


def version_key(version: str) -> tuple:
    """Sort key for card versions (``1.2.10``, ``3.0.0.1``, ``2.0.0-rc.10``): release numbers compare as
    numbers, a pre-release sorts before its release and its parts compare like SemVer's (numbers as numbers), and
    the text itself breaks any remaining tie (``03.0.0`` and ``3.0.0``), so the order is always the same."""
    head, dash, tail = version.partition("-")
    parts = head.split(".")
    count = next((i for i, part in enumerate(parts) if not part.isdigit()), len(parts))
    numbers = tuple(int(part) for part in parts[:count])
    while len(numbers) > 3 and numbers[-1] == 0:  # 3.0.0.0 is 3.0.0
        numbers = numbers[:-1]
    pre = [part for part in [*parts[count:], *(tail.split(".") if dash else [])] if part]
    pre_key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre)
    return (numbers, 0 if pre else 1, pre_key, version)


def _newness(entry: "RegistryEntry") -> tuple:
    """How new an entry is: its version, then the user's copy over the built-in one."""
    return (version_key(entry.version), entry.source == "user")


@dataclass(frozen=True)
class RegistryEntry:
    """One installed package: where it comes from (``builtin`` or ``user``) and where it lives."""

    id: str
    version: str
    title: str
    source: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.id}@{self.version}"


class ModelRegistry:
    """Finds, resolves, imports and removes model packages. ``problems`` lists packages that could not be read."""

    def __init__(self, builtin_dir: str | Path | None = None, user_dir: str | Path | None = None) -> None:
        self.builtin_dir = Path(builtin_dir) if builtin_dir is not None else BUILTIN_DIR
        self.user_dir = Path(user_dir) if user_dir is not None else user_models_dir()
        self.problems: list[str] = []

    def _scan(self, folder: Path, source: str) -> list[RegistryEntry]:
        entries: list[RegistryEntry] = []
        if not folder.is_dir():
            return entries
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or child.name.startswith("_"):
                continue
            is_package_dir = child.is_dir() and (child / "model.json").exists()
            is_zip = child.is_file() and child.suffix.lower() == ".zip"
            if not (is_package_dir or is_zip):
                if child.is_dir() and not child.name.endswith(".work"):  # <package>.work: a training's own folder
                    self.problems.append(f"{child}: no model.json, not a model package")
                continue
            try:
                card = load_card(child) if is_package_dir else open_package(child).card
            except ModelError as exc:
                self.problems.append(f"{child}: {exc.problem}")
                continue
            entries.append(RegistryEntry(card.id, card.version, card.title, source, child))
        return entries

    def list_models(self) -> list[RegistryEntry]:
        """All packages, built-in first, then the user's; unreadable ones are added to ``problems``."""
        self.problems = []
        entries = self._scan(self.builtin_dir, "builtin") + self._scan(self.user_dir, "user")
        return sorted(entries, key=lambda e: (e.id, _newness(e)))

    def find(self, name: str) -> RegistryEntry:
        """The entry for ``id`` (newest version; user over built-in on a tie) or ``id@version``."""
        model_id, _, version = name.partition("@")
        entries = self.list_models()
        matches = [e for e in entries if e.id == model_id and (not version or e.version == version)]
        if not matches:
            known = sorted({e.name for e in entries})
            listing = ", ".join(known) if known else "none installed"
            what = f"version {version} of model '{model_id}'" if version and any(e.id == model_id for e in entries) \
                else f"model '{name}'"
            ids = {e.id.lower(): e.id for e in entries}
            close = difflib.get_close_matches(model_id.lower(), list(ids), n=1, cutoff=0.75)
            guess = f" Did you mean '{ids[close[0]]}'?" if close and ids[close[0]] != model_id else ""
            raise ModelError(f"Unknown {what}.{guess} Known models: {listing}.", IMPORT_HINT)
        return max(matches, key=_newness)

    def resolve(self, name_or_path: str | Path) -> ModelPackage:
        """Open a package given an id, ``id@version``, a package folder, a ``model.json`` or a ``.zip`` path."""
        text = str(name_or_path)
        path = Path(text).expanduser()
        if path.exists():
            return open_package(path)
        if os.sep in text or "/" in text or text.lower().endswith((".zip", ".json")):
            raise ModelError(f"No model package at {path}.", IMPORT_HINT)
        return open_package(self.find(text).path)

    def import_package(self, path: str | Path, overwrite: bool = False) -> RegistryEntry:
        """Validate a package (card, weights SHA256 and format) and copy it atomically into the user folder."""
        package = open_package(path)
        card = package.card
        weights = package.verify() if package.has_weights() else None
        if weights is None and not card.weights_url:
            raise ModelError(f"The package {path} has no weights file {card.weights_file}.",
                             "Import the complete package (model.json with its weights).")
        existing = [e for e in self.list_models() if e.source == "user" and e.name == f"{card.id}@{card.version}"]
        if existing and not overwrite:
            raise ModelError(f"{card.id} {card.version} is already imported ({existing[0].path}).",
                             "Import with --overwrite to replace it, or give the package a new version.")
        # "<id>@<version>": ids and versions may contain "-" but never "@", so no two packages share a folder
        destination = self.user_dir / f"{card.id}@{card.version}"
        if destination.exists() and destination not in {e.path for e in existing}:
            raise ModelError(f"Cannot import {card.id} {card.version}: {destination} exists and is not that model.",
                             "Move that folder out of your model folder, then import again.")
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".import-{card.id}-", dir=self.user_dir))
        chmod_like_new(staging)  # readable by other users, as an exported package is
        try:
            self._copy_files(package, staging, weights)
            swap_into_place(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in (e.path for e in existing if e.path != destination):  # an older import's folder or zip
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        return RegistryEntry(card.id, card.version, card.title, "user", destination)

    def selection_note(self, entry: RegistryEntry) -> str | None:
        """What ``-m <id>`` picks when other packages share ``entry``'s id: a sentence when that is not ``entry``
        (an older import next to a newer built-in is otherwise silently unused), or when ``entry`` now hides a
        built-in of the same id; None when the id is ``entry``'s alone."""
        others = [e for e in self.list_models() if e.id == entry.id and e.path != entry.path]
        if not others:
            return None
        chosen = self.find(entry.id)
        if chosen.path != entry.path:
            return (f"'-m {entry.id}' still uses {chosen.name} ({chosen.source}), which is newer; "
                    f"choose this one with '-m {entry.name}'.")
        hidden = [e.name for e in others if e.source == "builtin"]
        if hidden:
            return (f"'-m {entry.id}' now uses this import instead of the built-in {', '.join(hidden)}; "
                    f"'medtranslate models remove {entry.name}' goes back to it.")
        return None

    @staticmethod
    def _copy_files(package: ModelPackage, staging: Path, weights: bytes | None) -> None:
        card = package.card
        if package.zip is not None:
            names = {"model.json": MAX_CARD_BYTES}
            names.update({n: MAX_EXTRA_BYTES for n in package.zip.members if is_extra_file(n) and n != "model.json"})
            for name, limit in names.items():
                (staging / name).write_bytes(package.zip.read(name, limit))
        else:
            (staging / "model.json").write_bytes(read_file_capped(package.path / "model.json", MAX_CARD_BYTES))
            for child in package.path.iterdir():
                if child.name != "model.json" and is_extra_file(child.name) and child.is_file() \
                        and not child.is_symlink():
                    (staging / child.name).write_bytes(read_file_capped(child, MAX_EXTRA_BYTES))
        if weights is not None:
            (staging / card.weights_file).write_bytes(weights)

    def remove(self, name: str) -> list[Path]:
        """Delete a user package (``id`` removes every user version, ``id@version`` one). Built-ins stay."""
        model_id, _, version = name.partition("@")
        entries = [e for e in self.list_models() if e.id == model_id and (not version or e.version == version)]
        user_entries = [e for e in entries if e.source == "user"]
        if not user_entries:
            if entries:
                raise ModelError(f"'{name}' is a built-in model and cannot be removed.",
                                 "Built-in models ship with MedTranslate; import a newer version instead.")
            known = ", ".join(sorted({e.name for e in self.list_models() if e.source == 'user'})) or "none"
            raise ModelError(f"No imported model '{name}'. Imported models: {known}.",
                             "See 'medtranslate models list'.")
        removed = []
        for entry in user_entries:
            if entry.path.is_dir():
                shutil.rmtree(entry.path)
            else:
                entry.path.unlink()
            removed.append(entry.path)
        return removed

