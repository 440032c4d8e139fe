"""Zip packages are untrusted: traversal, absolute paths, symlinks, foreign members, oversized members,
zip bombs and truncated archives are refused before anything is written or parsed."""

from __future__ import annotations

import stat
import zipfile

import pytest

import MedTranslateLib.models.package as package_module
from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.export import export_package
from MedTranslateLib.models.package import open_package
from MedTranslateLib.models.registry import ModelRegistry
from packages import make_test_card
from test_models_util import card_bytes_for, tiny_state, write_zip


@pytest.fixture
def good_members(tmp_path):
    folder = export_package(tiny_state(), make_test_card(), tmp_path / "src")
    return {name: (folder / name).read_bytes() for name in ("model.json", "weights.safetensors", "README.md")}


def _refused(path, match):
    with pytest.raises(ModelError, match=match):
        open_package(path)


def test_good_zip_opens_also_with_one_top_folder(tmp_path, good_members):
    flat = write_zip(tmp_path / "flat.zip", good_members)
    nested = write_zip(tmp_path / "nested.zip", {f"pkg/{k}": v for k, v in good_members.items()})
    for path in (flat, nested):
        assert open_package(path).load_state_dict()["generator.conv.bias"].shape == (4,)


def test_zip_made_by_a_file_manager_opens(tmp_path, good_members):
    """macOS Finder adds __MACOSX/._* and .DS_Store, Windows Thumbs.db: skipped unread, not refused."""
    extras = {"__MACOSX/pkg/._model.json": b"\0\5\x16\7", "pkg/.DS_Store": b"\0" * 8, "pkg/Thumbs.db": b"x"}
    path = write_zip(tmp_path / "finder.zip", {**{f"pkg/{k}": v for k, v in good_members.items()}, **extras})
    assert sorted(open_package(path).zip.members) == ["README.md", "model.json", "weights.safetensors"]


@pytest.mark.parametrize("name", ["../evil.txt", "pkg/../../evil.txt", "/etc/evil.txt", "C:/evil.txt",
                                  "dir\\evil.txt", "sub/dir/README.md", "NUL.txt", "con.md", "LICENSE.", "NOTES.txt "])
def test_unsafe_member_names_refused(tmp_path, good_members, name):
    path = write_zip(tmp_path / "bad.zip", {**good_members, name: b"x"})
    _refused(path, "Refusing the package")


def test_symlink_member_refused(tmp_path, good_members):
    path = write_zip(tmp_path / "link.zip", good_members)
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("LICENSE")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    _refused(path, "symbolic link")


def test_foreign_member_refused(tmp_path, good_members):
    path = write_zip(tmp_path / "code.zip", {**good_members, "run_me.py": b"import os"})
    _refused(path, "not part of a model package")


def test_too_many_members_refused(tmp_path, good_members, monkeypatch):
    monkeypatch.setattr(package_module, "MAX_ZIP_MEMBERS", 4)
    extras = {f"note{i}.txt": b"n" for i in range(3)}
    _refused(write_zip(tmp_path / "many.zip", {**good_members, **extras}), "members")


def test_oversized_member_refused(tmp_path, good_members, monkeypatch):
    monkeypatch.setattr(package_module, "MAX_EXTRA_BYTES", 1000)
    big = bytes(range(256)) * 8  # 2048 bytes, barely compressible
    _refused(write_zip(tmp_path / "big.zip", {**good_members, "README.md": big}, zipfile.ZIP_STORED), "too large")


def test_member_larger_than_declared_is_caught_while_streaming(tmp_path, good_members):
    """A forged header that under-states the size must not let more bytes through."""
    path = write_zip(tmp_path / "forged.zip", good_members, zipfile.ZIP_STORED)
    safe = package_module.open_safe_zip(path)
    info = safe.members["weights.safetensors"]
    info.file_size -= 10
    with pytest.raises(ModelError, match="declared size|damaged"):
        safe.read("weights.safetensors", package_module.MAX_WEIGHTS_BYTES)


def test_zip_bomb_ratio_refused(tmp_path):
    zeros = b"\0" * (4 * 1024 * 1024)
    path = write_zip(tmp_path / "bomb.zip", {"model.json": card_bytes_for(zeros), "weights.safetensors": zeros})
    _refused(path, "compression ratio")


def test_truncated_zip_refused(tmp_path, good_members):
    path = write_zip(tmp_path / "full.zip", good_members)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    _refused(truncated, "not a readable zip file")


def test_corrupted_member_data_refused(tmp_path, good_members):
    path = write_zip(tmp_path / "stored.zip", good_members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    offset = data.find(good_members["weights.safetensors"][-64:])
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged|SHA256"):
        open_package(path).load_state_dict()


def test_zip_without_card_or_with_unnamed_weights(tmp_path, good_members):
    _refused(write_zip(tmp_path / "nocard.zip", {"weights.safetensors": good_members["weights.safetensors"]}),
             "no model.json")
    _refused(write_zip(tmp_path / "two.zip", {**good_members, "other.safetensors": b"x"}), "does not name")


def test_import_of_evil_zip_writes_nothing(tmp_path, good_members, isolated_user_models):
    path = write_zip(tmp_path / "evil.zip", {**good_members, "../../evil.txt": b"x"})
    with pytest.raises(ModelError):
        ModelRegistry(builtin_dir=tmp_path / "none").import_package(path)
    assert not (tmp_path / "evil.txt").exists()
    assert list(isolated_user_models.iterdir()) == []


@pytest.mark.parametrize("top", ["model (final)", "Modèle CT", "model_v2+ct", "my model 2"])
def test_the_top_folder_of_a_zip_may_have_any_ordinary_name(tmp_path, good_members, top):
    """'Compress' of a folder named 'Modèle CT' or 'model (final)' was refused as unsafe ('has a .. component or
    an unsafe name'), as if the package were an attack; that folder's name is dropped on import, only the names of
    the files inside are written."""
    path = write_zip(tmp_path / "package.zip", {f"{top}/{k}": v for k, v in good_members.items()})
    assert sorted(open_package(path).zip.members) == ["README.md", "model.json", "weights.safetensors"]


@pytest.mark.parametrize("top", ["..", "bad\x07name", "a\\b"])
def test_a_top_folder_that_names_no_ordinary_folder_is_still_refused(tmp_path, good_members, top):
    path = write_zip(tmp_path / "package.zip", {f"{top}/{k}": v for k, v in good_members.items()})
    _refused(path, "Refusing the package")
