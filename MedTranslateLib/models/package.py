"""Model packages: a folder or ``.zip`` holding ``model.json``, a ``.safetensors`` weights file and an optional
README. Package files are untrusted: zip members are checked (names, types, counts, sizes, compression
ratio) and read with a size cap; weights are hashed (SHA256 against the card) before they are parsed,
and only ever parsed by ``safetensors`` (never pickle / ``torch.load``)."""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.card import MAX_CARD_BYTES, ModelCard, load_card, parse_card_bytes
from MedTranslateLib.models.paths import MAX_WEIGHTS_BYTES, user_models_dir

if TYPE_CHECKING:
    import torch

#: Largest README.md or other small extra file accepted in a package.
MAX_EXTRA_BYTES = 1024 * 1024
#: Most members (files and folders) a package zip may hold.
MAX_ZIP_MEMBERS = 32
#: Largest uncompressed / compressed size ratio accepted for members over ``RATIO_CHECK_BYTES``.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 1024 * 1024
#: Extra files a package may carry besides model.json, the weights and README.md.
EXTRA_SUFFIXES = (".md", ".txt", ".json", ".png", ".jpg", ".jpeg", ".cff", ".bib")
EXTRA_NAMES = ("LICENSE", "LICENCE", "NOTICE", "CITATION")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*(?<![. ])$")  # Windows drops a trailing dot or space
_WINDOWS_DEVICE = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?$", re.IGNORECASE)  # NUL.txt is NUL there
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_CHUNK = 1024 * 1024


def _unsafe(zip_path: Path, member: str, why: str) -> ModelError:
    return ModelError(f"Refusing the package {zip_path}: member {member!r} {why}.",
                      "Only import model packages from sources you trust; re-export or re-download the package.")


def _member_parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The checked path components of a zip member (no absolute paths, '..', backslashes, drives, links)."""
    name = info.filename
    if "\\" in name:
        raise _unsafe(zip_path, name, "contains a backslash")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ":" in name:
        raise _unsafe(zip_path, name, "is an absolute path or names a drive")
    parts = tuple(p for p in PurePosixPath(name).parts)
    # the first folder of a longer name may be a zipped folder's own name ("Modèle CT", "model (final)"): it is
    # dropped on import (or the member refused as in a sub-folder), so only what is written must be a safe name
    top_ok = len(parts) > 1 and parts[0] not in ("..", ".") and not _CONTROL.search(parts[0])
    if not parts or any(p in ("..", ".") or not _SAFE_NAME.match(p) or _WINDOWS_DEVICE.match(p)
                        for p in parts[1 if top_ok else 0:]):
        raise _unsafe(zip_path, name, "has a '..' component or an unsafe name")
    file_type = stat.S_IFMT(info.external_attr >> 16)  # Unix type bits; 0 when the zip does not record them
    if file_type == stat.S_IFLNK:
        raise _unsafe(zip_path, name, "is a symbolic link")
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise _unsafe(zip_path, name, "is not a regular file")
    if info.flag_bits & 0x1:
        raise _unsafe(zip_path, name, "is encrypted")
    return parts


def _os_metadata(name: str) -> bool:
    """Entries that file managers add to zips (macOS ``__MACOSX/``, ``._*``, ``.DS_Store``; Windows
    ``Thumbs.db``, ``desktop.ini``)."""
    parts = PurePosixPath(name).parts
    base = parts[-1] if parts else ""
    return bool(parts) and (parts[0] == "__MACOSX" or base.startswith("._")
                            or base in (".DS_Store", "Thumbs.db", "desktop.ini"))


def is_extra_file(name: str) -> bool:
    """True for the files a package may carry besides its card and weights (README, licence, text)."""
    return name == "README.md" or name.upper() in EXTRA_NAMES or name.lower().endswith(EXTRA_SUFFIXES)


@dataclass
class SafeZip:
    """A package zip whose members passed the safety checks: ``members`` maps a file name
    (``model.json``, the weights file, README.md, extras) to its ``ZipInfo``."""

    path: Path
    members: dict[str, zipfile.ZipInfo]

    def read(self, name: str, limit: int) -> bytes:
        """A member's bytes, streamed with a cap of ``min(limit, declared size)`` (the header is not trusted)."""
        info = self.members[name]
        cap = min(limit, info.file_size)
        out = bytearray()
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(info) as stream:
                while chunk := stream.read(min(_CHUNK, cap + 1 - len(out))):
                    out += chunk
                    if len(out) > cap:
                        raise _unsafe(self.path, info.filename, f"expands beyond its declared size ({cap} bytes)")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ModelError(f"The package {self.path} is damaged: reading {info.filename!r} failed ({exc}).",
                             "Download or export the package again.") from None
        if len(out) != info.file_size:
            raise ModelError(f"The package {self.path} is damaged: {info.filename!r} is truncated.",
                             "Download or export the package again.")
        return bytes(out)


def open_safe_zip(zip_path: Path) -> SafeZip:
    """Open a package zip and check every member before anything is read."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelError(f"{zip_path} is not a readable zip file ({exc}).",
                         "The download may be incomplete: download or export the package again.") from None
    with archive:
        infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ModelError(f"Refusing the package {zip_path}: it has {len(infos)} members (at most "
                         f"{MAX_ZIP_MEMBERS} allowed).", "A model package holds model.json, weights and a README.")
    files: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    for info in infos:
        if _os_metadata(info.filename):
            continue  # never read: Finder's __MACOSX/._* and .DS_Store, Windows' Thumbs.db
        parts = _member_parts(zip_path, info)
        if not info.is_dir():
            files.append((parts, info))
    tops = {parts[0] for parts, _ in files if len(parts) > 1}
    prefix = 1 if files and len(tops) == 1 and all(len(parts) == 2 for parts, _ in files) else 0
    members: dict[str, zipfile.ZipInfo] = {}
    for parts, info in files:
        if len(parts) != prefix + 1:
            raise _unsafe(zip_path, info.filename, "is in a sub-folder (packages are flat)")
        name = parts[-1]
        if name in members:
            raise _unsafe(zip_path, info.filename, "is duplicated")
        if name != "model.json" and not name.endswith(".safetensors") and not is_extra_file(name):
            raise _unsafe(zip_path, info.filename, "is not part of a model package (model.json, "
                          "*.safetensors, README.md, licence or text files)")
        limit = (MAX_WEIGHTS_BYTES if name.endswith(".safetensors")
                 else MAX_CARD_BYTES if name == "model.json" else MAX_EXTRA_BYTES)
        if info.file_size > limit:
            raise _unsafe(zip_path, info.filename, f"is too large ({info.file_size} bytes uncompressed)")
        if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise _unsafe(zip_path, info.filename, f"has a suspicious compression ratio "
                          f"({info.file_size} / {info.compress_size} bytes; possible zip bomb)")
        members[name] = info
    if "model.json" not in members:
        raise ModelError(f"The zip {zip_path} holds no model.json.",
                         "A model package is a folder or zip with model.json and a .safetensors weights file.")
    return SafeZip(zip_path, members)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class ModelPackage:
    """An opened model package (folder or zip). The card is validated on open; the weights are read,
    size-checked and SHA256-verified on every ``load_state_dict()``."""

    def __init__(self, path: Path, card: ModelCard, safe_zip: SafeZip | None = None) -> None:
        self.path = path
        self.card = card
        self.zip = safe_zip

    def __repr__(self) -> str:
        return f"ModelPackage({self.card.id}@{self.card.version}, {self.path})"

    @property
    def is_zip(self) -> bool:
        return self.zip is not None

    def weights_path(self) -> Path | None:
        """The weights file on disk: in the package folder, else in the download cache; None if absent
        (for a zip, only a downloaded copy counts; weights inside the zip are read with ``read_weights``)."""
        if self.zip is None:
            local = self.path / self.card.weights_file
            if local.is_file():
                return local
        cached = self.download_cache_path()
        return cached if cached.is_file() else None

    def download_cache_path(self) -> Path:
        """Where downloaded weights live: in the package folder when that is inside the user model folder,
        otherwise in ``<user folder>/.downloads/<id>-<version>/``."""
        user = user_models_dir().resolve()
        if not self.is_zip and self.path.resolve().is_relative_to(user):
            return self.path / self.card.weights_file
        return user / ".downloads" / f"{self.card.id}@{self.card.version}" / self.card.weights_file

    def ensure_weights(self, progress: Callable[[int, int | None], None] | None = None) -> Path:
        """The weights file on disk, downloaded from ``weights.url`` first if missing (``progress(received,
        total_or_None)`` as data arrives)."""
        existing = self.weights_path()
        if existing is not None:
            return existing
        card = self.card
        if not card.weights_url:
            others = sorted(p.name for p in self.path.glob("*.safetensors")) if self.path.is_dir() else []
            found = f" (the folder holds {', '.join(others)}: the card's weights.file names another)" if others else ""
            raise ModelError(f"The weights file {card.weights_file} of {card.id} {card.version} is missing "
                             f"({self.path}) and the card gives no download URL{found}.",
                             "Re-import the complete package (model.json together with its weights), or give the "
                             "card's weights.file the weights' name.")
        from MedTranslateLib.models.download import download_file

        target = self.download_cache_path()
        download_file(card.weights_url, target, card.weights_sha256, expected_size=card.weights_size,
                      progress=progress)
        return target

    def has_weights(self) -> bool:
        """True when the weights can be read without downloading."""
        if self.zip is not None and self.card.weights_file in self.zip.members:
            return True
        return self.weights_path() is not None

    def read_weights(self, progress: Callable[[int, int | None], None] | None = None) -> bytes:
        """The weights bytes, read once with a size cap and verified against the card's size and SHA256.
        Missing weights with a ``weights.url`` in the card are downloaded first."""
        name = self.card.weights_file
        if self.zip is not None and name in self.zip.members:
            data = self.zip.read(name, MAX_WEIGHTS_BYTES)
        else:
            path = self.weights_path()
            if path is None:
                path = self.ensure_weights(progress=progress)
            data = read_file_capped(path, MAX_WEIGHTS_BYTES)
        if self.card.weights_size is not None and len(data) != self.card.weights_size:
            raise ModelError(f"The weights of {self.card.id} {self.card.version} ({self.path}) are {len(data)} "
                             f"bytes; the card says {self.card.weights_size}.",
                             "The file is incomplete or replaced: re-download or re-import the package (weights "
                             "replaced on purpose need the card's weights.size_bytes and sha256 updated).")
        digest = sha256_bytes(data)
        if digest != self.card.weights_sha256:
            raise ModelError(f"The weights of {self.card.id} {self.card.version} ({self.path}) do not match the "
                             f"card's SHA256 (expected {self.card.weights_sha256}, got {digest}).",
                             "The file is damaged or was replaced: re-download or re-import the package (weights "
                             "replaced on purpose need the card's weights.sha256 updated).")
        return data

    def verify(self) -> bytes:
        """Check size, SHA256 and the safetensors structure (header) of the weights; returns their bytes."""
        data = self.read_weights()
        problem = safetensors_header_problem(data)
        if problem:
            raise ModelError(f"The weights of {self.card.id} {self.card.version} ({self.path}) are not a valid "
                             f"safetensors file: {problem}.", "Re-export the package.")
        return data

    def load_state_dict(self, progress: Callable[[int, int | None], None] | None = None) -> dict[str, "torch.Tensor"]:
        """The verified weights as a ``{name: tensor}`` dict (CPU), parsed with safetensors only."""
        return _parse_safetensors(self.read_weights(progress), self)


def read_file_capped(path: Path, limit: int, what: str = "weights file",
                     too_large: str = "This is not a MedTranslate weights file.") -> bytes:
    """A regular file's bytes (through a link too: a hub snapshot's files are links, and what is read is checked
    all the same), refused with :class:`ModelError` when larger than ``limit``; ``what`` names the file in
    messages, ``too_large`` says what to do about one over the limit."""
    try:
        if not path.is_file():
            raise ModelError(f"The {what} {path} is not a regular file (a folder, a device or a broken link).",
                             "Re-import the package.")
        size = path.stat().st_size
        if size > limit:
            raise ModelError(f"The {what} {path} is {size} bytes, more than the {limit} allowed.", too_large)
        with path.open("rb") as handle:
            data = handle.read(size + 1)  # its size, not the cap: read(n) reserves n bytes up front
    except OSError as exc:
        raise ModelError(f"Cannot read the {what} {path}: {exc.strerror}.", "Check the permissions.") from None
    if len(data) != size:
        raise ModelError(f"The {what} {path} changed while it was read ({size} bytes, then {len(data)}"
                         f"{' or more' if len(data) > size else ''}).", "Re-import it when nothing writes to it.")
    return data


def safetensors_header_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed safetensors file (header and offsets), or None. Parses JSON only."""
    import json

    if len(data) < 8:
        return "shorter than the 8-byte header length"
    header_size = int.from_bytes(data[:8], "little")
    if header_size < 2 or 8 + header_size > len(data) or header_size > 100 * 1024 * 1024:
        return f"header length {header_size} does not fit the {len(data)}-byte file"
    try:
        header = json.loads(data[8:8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "the header is not JSON"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    body = len(data) - 8 - header_size
    tensors = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= body):
            return f"tensor {name!r} has invalid data offsets"
        tensors += 1
    if not tensors:
        return "it holds no tensors"
    return None


def _parse_safetensors(data: bytes, package: ModelPackage) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error types for any malformed input
        raise ModelError(f"The weights of {package.card.id} {package.card.version} ({package.path}) are not a "
                         f"valid safetensors file ({type(exc).__name__}: {str(exc)[:200]}).",
                         "Re-export the package with 'medtranslate train' or export_package(); pickled .pt "
                         "checkpoints must be converted with import_legacy_checkpoint().") from None
    if not state:
        raise ModelError(f"The weights of {package.card.id} ({package.path}) hold no tensors.",
                         "Re-export the package.")
    return state


def open_package(path: str | Path) -> ModelPackage:
    """Open a package from a folder, its ``model.json`` or a ``.zip``; validates the card (not the weights)."""
    target = Path(path).expanduser()
    if target.is_file() and target.name == "model.json":
        target = target.parent
    if target.is_dir():
        return ModelPackage(target, load_card(target / "model.json"))
    if target.is_file():
        if target.suffix.lower() != ".zip" and not zipfile.is_zipfile(target):
            raise ModelError(f"{target} is neither a package folder nor a zip file.",
                             "Give a folder with model.json, a package .zip, or a model id.")
        safe = open_safe_zip(target)
        card = parse_card_bytes(safe.read("model.json", MAX_CARD_BYTES), source=f"{target}!model.json")
        if card.weights_file not in safe.members and not card.weights_url:
            raise ModelError(f"The zip {target} holds no weights file {card.weights_file!r} and its card "
                             "gives no download URL.", "Export or download the complete package again.")
        extra_weights = [n for n in safe.members if n.endswith(".safetensors") and n != card.weights_file]
        if extra_weights:
            raise _unsafe(target, extra_weights[0], "is a weights file the card does not name")
        return ModelPackage(target, card, safe)
    raise ModelError(f"No model package at {target}.", "Give a package folder, a .zip file or a model id.")
