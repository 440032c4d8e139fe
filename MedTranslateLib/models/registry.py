"""The model registry: built-in packages (``MedTranslateLib/models/builtin/<id>/``) and the user's model folder
(``MEDTRANSLATE_MODELS_DIR`` or ``platformdirs.user_data_dir("MedTranslate")/models``); import, resolve, remove."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from MedTranslateLib.errors import ModelError, OutputError
from MedTranslateLib.models.card import MAX_CARD_BYTES, load_card
from MedTranslateLib.io.atomic import SwapError, chmod_like_new, swap_into_place
from MedTranslateLib.models.paths import user_models_dir
from MedTranslateLib.signals import signals_deferred
from MedTranslateLib.models.package import (
    MAX_EXTRA_BYTES,
    ModelPackage,
    is_extra_file,
    read_file_capped,
    open_package,
    open_safe_zip,
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


@dataclass(frozen=True)
class PackageProblem:
    """A package the registry could not read: where, why, what to do, and the ``(id, version)`` pairs it claims
    (its ``model.json``'s when that is JSON at all, its name's when that is ``<id>@<version>``, as imports are)."""

    path: Path
    problem: str
    fix: str
    source: str
    claims: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def claims_name(self, model_id: str, version: str = "") -> bool:
        """True when it claims ``model_id`` (in ``version``, when one is given)."""
        return any(i == model_id and (not version or v == version) for i, v in self.claims)

    def versions_of(self, model_id: str, version: str = "") -> list[str]:
        """The versions of ``model_id`` it claims ("" when its card names no version), newest first."""
        return sorted({v for i, v in self.claims if i == model_id and (not version or v == version)},
                      key=version_key, reverse=True)

    def remedy(self, name: str) -> str:
        """What to do, ``name`` being the ``id@version`` it was asked by."""
        if self.source == "builtin":
            return "Reinstall MedTranslate: a package it ships is damaged."
        return f"{self.fix} Or remove it with 'medtranslate models remove {name}'.".strip()

    def to_json(self) -> dict[str, object]:
        """What ``models list --json`` gives of it."""
        return {"path": str(self.path), "problem": self.problem, "fix": self.fix, "source": self.source,
                "claims": [f"{i}@{v}" if v else i for i, v in self.claims]}


def _claims(path: Path) -> tuple[tuple[str, str], ...]:
    """The ``(id, version)`` pairs an unreadable package claims: its name's (``<id>@<version>``), its card's."""
    model_id, at, version = (path.stem if path.is_file() else path.name).partition("@")
    claims = [(model_id, version)] if at else []
    card = _raw_card(path)
    if isinstance(card, dict) and isinstance(card.get("id"), str) and card["id"]:
        version = card.get("version")
        claims.append((card["id"], version if isinstance(version, str) else ""))
    return tuple(dict.fromkeys(claims))


def _raw_card(path: Path) -> object:
    """The parsed ``model.json`` of a package whose card did not pass, or None when it is not JSON at all."""
    try:
        if path.is_file():
            raw = open_safe_zip(path).read("model.json", MAX_CARD_BYTES)
        else:
            card = path / "model.json"
            if card.is_symlink() or not card.is_file() or card.stat().st_size > MAX_CARD_BYTES:
                return None
            raw = card.read_bytes()
        return json.loads(raw.decode("utf-8-sig"))
    except (ModelError, KeyError, OSError, ValueError, RecursionError):  # RecursionError: nested too deeply
        return None


def open_import_source(path: str | Path) -> ModelPackage:
    """The package to import from a folder, its model.json or a .zip (an id names nothing to import)."""
    if not Path(path).expanduser().exists():
        raise ModelError(f"No model package at {path}: no such file or folder to import.",
                         "Give the package's .zip file or its folder (holding model.json); the installed models "
                         "are listed by 'medtranslate models list'.")
    return open_package(path)


def _is_package(path: Path) -> bool:
    """True for what is meant as a package: a folder with model.json, or a zip file."""
    return (path / "model.json").exists() if path.is_dir() else zipfile.is_zipfile(path)


def _sentence(text: str) -> str:
    """``text`` ending with a full stop."""
    return text if text.endswith(".") else f"{text}."


#: in the hidden name of a package being deleted (out of the registry's sight, swept by the next remove)
_REMOVING = ".removing-"
_FOLDER_FIX = ("Free some disk space or make your model folder writable, or set MEDTRANSLATE_MODELS_DIR to a folder "
              "you can write to.")


def _delete(path: Path) -> None:
    """Delete a package folder or zip (a symbolic link itself, not what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _move_aside(path: Path) -> Path:
    """Rename a package to a hidden name in its folder, in one step: the registry no longer sees it, and a delete
    stopped half-way (Ctrl-C, a file in use) leaves no package without its card or weights behind."""
    hidden = path.with_name(f"{_REMOVING}{secrets.token_hex(8)}")  # short: any package's name may be 255 bytes
    os.rename(path, hidden)
    return hidden


def _discard(paths: list[Path]) -> None:
    """Move packages aside then delete them; all are moved before any is deleted, and when one cannot be moved
    the others are put back (:class:`OutputError`: nothing was removed)."""
    moved: list[tuple[Path, Path]] = []
    with signals_deferred():  # Ctrl-C waits until every package is moved aside, or put back
        try:
            for path in paths:
                moved.append((path, _move_aside(path)))
        except OSError as exc:
            for original, hidden in reversed(moved):
                with contextlib.suppress(OSError):
                    os.rename(hidden, original)
            failed = paths[len(moved)]
            raise OutputError(f"Cannot remove {failed.name} ({failed}): {exc.strerror or exc}. Nothing was removed.",
                              "Make your model folder writable (or close the program using the model), then "
                              "remove it again.") from None
    for _, hidden in moved:
        with contextlib.suppress(OSError):  # what is left is hidden, and swept by the next remove
            _delete(hidden)


def _sweep(folder: Path) -> None:
    """Delete what earlier removes left half-deleted (hidden ``.removing-*`` entries)."""
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            if child.name.startswith(_REMOVING):
                with contextlib.suppress(OSError):
                    _delete(child)


class ModelRegistry:
    """Finds, resolves, imports and removes model packages. ``problems`` lists the packages that could not be read
    (refreshed by every listing); ``warnings`` says which of them ``find`` / ``resolve`` passed over, to show."""

    def __init__(self, builtin_dir: str | Path | None = None, user_dir: str | Path | None = None) -> None:
        self.builtin_dir = Path(builtin_dir) if builtin_dir is not None else BUILTIN_DIR
        self.user_dir = Path(user_dir) if user_dir is not None else user_models_dir()
        self.problems: list[PackageProblem] = []
        self.warnings: list[str] = []

    def _scan(self, folder: Path, source: str) -> list[RegistryEntry]:
        entries: list[RegistryEntry] = []
        try:
            if not folder.is_dir():
                return entries
            children = sorted(folder.iterdir())
        except OSError as exc:  # another user's folder: its packages are missing, say why (no traceback)
            fix = ("Reinstall MedTranslate." if source == "builtin" else
                   "Give this user permission to read it, or set MEDTRANSLATE_MODELS_DIR to a folder of your own.")
            self.problems.append(PackageProblem(folder, f"the model folder cannot be read ({exc.strerror or exc})",
                                                fix, source))
            return entries
        for child in children:
            if child.name.startswith(".") or child.name.startswith("_"):
                continue
            try:
                is_package_dir = child.is_dir() and (child / "model.json").exists()
                is_zip = child.is_file() and child.suffix.lower() == ".zip"
            except OSError as exc:  # a folder of another user's: one problem, not a failed listing
                self.problems.append(PackageProblem(child, f"cannot be read ({exc.strerror or exc})",
                                                    "Give this user permission to read it, or move it out of the "
                                                    "model folder.", source, _claims(child)))
                continue
            if not (is_package_dir or is_zip):
                if child.is_dir() and not child.name.endswith(".work"):  # <package>.work: a training's own folder
                    self.problems.append(PackageProblem(child, "no model.json, not a model package",
                                                        "Move that folder out of the model folder.", source,
                                                        _claims(child)))
                continue
            try:
                card = load_card(child) if is_package_dir else open_package(child).card
            except ModelError as exc:
                self.problems.append(PackageProblem(child, exc.problem, exc.fix, source, _claims(child)))
                continue
            entries.append(RegistryEntry(card.id, card.version, card.title, source, child))
        return entries

    def list_models(self) -> list[RegistryEntry]:
        """All packages, built-in first, then the user's; unreadable ones are added to ``problems``."""
        self.problems = []
        entries = self._scan(self.builtin_dir, "builtin") + self._scan(self.user_dir, "user")
        return sorted(entries, key=lambda e: (e.id, _newness(e)))

    def find(self, name: str) -> RegistryEntry:
        """The entry for ``id`` (newest version; user over built-in on a tie) or ``id@version``. A package of that
        name that cannot be read is reported (its card error) when nothing else matches, else added to ``warnings``
        when it would have been chosen."""
        model_id, _, version = name.partition("@")
        entries = self.list_models()
        matches = [e for e in entries if e.id == model_id and (not version or e.version == version)]
        unreadable = [p for p in self.problems if p.claims_name(model_id, version)]
        if not matches:
            raise _unreadable_error(unreadable, model_id, version) if unreadable else _unknown(name, entries)
        chosen = max(matches, key=_newness)
        for problem in unreadable:  # one that -m would have taken over the chosen one
            skipped = [v for v in problem.versions_of(model_id, version)
                       if not v or (version_key(v), problem.source == "user") >= _newness(chosen)]
            warning = _passed_over(name, chosen, problem, f"{model_id}@{skipped[0]}".rstrip("@")) if skipped else ""
            if warning and warning not in self.warnings:
                self.warnings.append(warning)
        return chosen

    def resolve(self, name_or_path: str | Path) -> ModelPackage:
        """Open a package given an id, ``id@version``, a package folder, a ``model.json`` or a ``.zip`` path."""
        text = str(name_or_path)
        path = Path(text).expanduser()
        bare = not (os.sep in text or "/" in text or text.lower().endswith((".zip", ".json")))
        if path.exists():
            try:
                return open_package(path)
            except ModelError:
                # a bare id that a data folder or file here happens to share: the registry's model was meant
                model_id = text.partition("@")[0]
                known = bare and not _is_package(path) and (any(e.id == model_id for e in self.list_models())
                                                             or any(p.claims_name(model_id) for p in self.problems))
                if not known:
                    raise
        elif not bare:
            raise ModelError(f"No model package at {path}.", IMPORT_HINT)
        return open_package(self.find(text).path)

    def import_package(self, path: str | Path, overwrite: bool = False) -> RegistryEntry:
        """Validate a package (card, weights SHA256 and format) and copy it atomically into the user folder;
        ``overwrite`` replaces an import of the same id and version, readable or not."""
        package = open_import_source(path)
        card = package.card
        weights = package.verify() if package.has_weights() else None
        if weights is None and not card.weights_url:
            raise ModelError(f"The package {path} has no weights file {card.weights_file}.",
                             "Import the complete package (model.json with its weights).")
        existing = [e for e in self.list_models() if e.source == "user" and e.name == f"{card.id}@{card.version}"]
        unreadable = [p for p in self.problems if p.source == "user" and p.claims_name(card.id, card.version)]
        if existing and not overwrite:
            raise ModelError(f"{card.id} {card.version} is already imported ({existing[0].path}).",
                             "Import with --overwrite to replace it, or give the package a new version.")
        if unreadable and not overwrite:
            raise ModelError(f"{card.id} {card.version} is already in your model folder ({unreadable[0].path}), "
                             f"but cannot be read: {_sentence(unreadable[0].problem)}",
                             "Import with --overwrite to replace it.")
        replaced = {e.path for e in existing} | {p.path for p in unreadable}
        # "<id>@<version>": ids and versions may contain "-" but never "@", so no two packages share a folder
        destination = self.user_dir / f"{card.id}@{card.version}"
        if destination.exists() and destination not in replaced:
            raise ModelError(f"Cannot import {card.id} {card.version}: {destination} exists and is not that model.",
                             "Move that folder out of your model folder, then import again.")
        staging: Path | None = None
        try:  # a full disk or a read-only model folder: one clear error, and nothing installed
            self.user_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".import-{card.id}-", dir=self.user_dir))
            chmod_like_new(staging)  # readable by other users, as an exported package is
            self._copy_files(package, staging, weights)
            swap_into_place(staging, destination, noun="copy")
        except (OSError, SwapError) as exc:
            reason = exc.reason if isinstance(exc, SwapError) else exc.strerror or exc
            earlier = exc.earlier if isinstance(exc, SwapError) else ""  # what became of the copy being replaced
            raise OutputError(f"Cannot import {card.id} {card.version} into your model folder {self.user_dir}: "
                              f"{reason}. Nothing was installed" + (f"; {earlier}" if earlier else "."),
                              _FOLDER_FIX) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        old = sorted(replaced - {destination})  # an older import's folder or zip
        if old:
            try:
                _discard(old)
            except OutputError as exc:
                raise OutputError(f"Imported {card.id} {card.version} into {destination}, but the copy it "
                                  f"replaces stays: {exc.problem}", exc.fix) from None
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
            (staging / "model.json").write_bytes(read_file_capped(package.path / "model.json", MAX_CARD_BYTES,
                                                                  "model card"))
            for child in package.path.iterdir():
                if child.name != "model.json" and is_extra_file(child.name) and child.is_file() \
                        and not child.is_symlink():
                    too_large = (f"Move {child.name} out of the package folder (a package's README, licence, text "
                                 f"and image files may be at most {MAX_EXTRA_BYTES // 1024} KiB each), then import "
                                 "again.")
                    (staging / child.name).write_bytes(read_file_capped(child, MAX_EXTRA_BYTES, "file", too_large))
        if weights is not None:
            (staging / card.weights_file).write_bytes(weights)

    def remove(self, name: str) -> list[Path]:
        """Delete a user package (``id`` removes every user version, ``id@version`` one), also one that cannot be
        read but claims that name. Built-ins stay."""
        model_id, _, version = name.partition("@")
        entries = [e for e in self.list_models() if e.id == model_id and (not version or e.version == version)]
        unreadable = [p for p in self.problems if p.claims_name(model_id, version)]
        paths = [e.path for e in entries if e.source == "user"] + [p.path for p in unreadable if p.source == "user"]
        if not paths:
            if entries or unreadable:
                raise ModelError(f"'{name}' is a built-in model and cannot be removed.",
                                 "Built-in models ship with MedTranslate; import a newer version instead.")
            known = ", ".join(sorted({e.name for e in self.list_models() if e.source == 'user'})) or "none"
            raise ModelError(f"No imported model '{name}'. Imported models: {known}.",
                             "See 'medtranslate models list'.")
        _sweep(self.user_dir)
        _discard(paths)
        return paths


def _unknown(name: str, entries: list[RegistryEntry]) -> ModelError:
    """The error for a name no package has: the known ones, and a guess at a misspelt id."""
    model_id, _, version = name.partition("@")
    known = sorted({e.name for e in entries})
    listing = ", ".join(known) if known else "none installed"
    what = f"version {version} of model '{model_id}'" if version and any(e.id == model_id for e in entries) \
        else f"model '{name}'"
    ids = {e.id.lower(): e.id for e in entries}
    close = difflib.get_close_matches(model_id.lower(), list(ids), n=1, cutoff=0.75)
    guess = f" Did you mean '{ids[close[0]]}'?" if close and ids[close[0]] != model_id else ""
    return ModelError(f"Unknown {what}.{guess} Known models: {listing}.", IMPORT_HINT)


def _unreadable_error(unreadable: list[PackageProblem], model_id: str, version: str) -> ModelError:
    """The error for a name only unreadable packages claim: the newest one's card error and what to do."""
    newest = max(unreadable, key=lambda p: version_key(p.versions_of(model_id, version)[0]))
    name = f"{model_id}@{newest.versions_of(model_id, version)[0]}".rstrip("@")
    more = f" {len(unreadable) - 1} more package(s) of '{model_id}' cannot be read either: see " \
           "'medtranslate models list'." if len(unreadable) > 1 else ""
    return ModelError(f"The model package {newest.path} ({name}) cannot be read: {_sentence(newest.problem)}{more}",
                      newest.remedy(name))


def _passed_over(name: str, chosen: RegistryEntry, problem: PackageProblem, skipped: str) -> str:
    """The warning that ``name`` runs ``chosen`` because ``problem``'s package (``skipped``) cannot be read."""
    return (f"'{name}' uses {chosen.name} ({chosen.source}), not {skipped} in {problem.path}, which cannot be read: "
            f"{_sentence(problem.problem)} {problem.remedy(skipped)}")

