"""Model folder failures: a full disk or a read-only model folder during import and remove gives one clear error
(no traceback) and leaves nothing half-written or half-removed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from MedTranslateLib.errors import MedTranslateError, ModelError
from MedTranslateLib.models.registry import ModelRegistry
from packages import make_untrained_package
from test_models_util import make_package


@pytest.fixture
def builtin(tmp_path: Path) -> Path:
    folder = tmp_path / "builtin"
    make_package(folder / "builtin-ct", id="builtin-ct", version="1.0.0")
    return folder


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _deny(monkeypatch: pytest.MonkeyPatch, denied, code: int) -> None:
    """Make renaming and deleting the paths for which ``denied(path)`` holds fail with ``code`` (a read-only file
    system, a folder without write permission)."""
    import shutil

    def guard(real):
        def call(path, *args, **kwargs):
            if denied(str(path)):
                raise OSError(code, os.strerror(code), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "rename", guard(os.rename))
    monkeypatch.setattr(os, "unlink", guard(os.unlink))
    monkeypatch.setattr(shutil, "rmtree", guard(shutil.rmtree))


def test_import_onto_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, builtin, monkeypatch,
                                                                       isolated_user_models) -> None:
    """A full disk while the weights are copied was a traceback (OSError ENOSPC) out of 'models import'."""
    source = make_package(tmp_path / "src", id="big", version="1.0.0")
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.endswith(".safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(MedTranslateError, match="No space left on device") as caught:
        ModelRegistry(builtin_dir=builtin).import_package(source)
    assert "big 1.0.0" in caught.value.problem and caught.value.fix
    assert os.listdir(isolated_user_models) == []  # no staging folder, no half package


def test_import_into_a_read_only_model_folder_is_one_clear_error(tmp_path, builtin, monkeypatch,
                                                                   isolated_user_models) -> None:
    """The staging folder cannot be made in a read-only model folder: an error naming the folder and the fix."""
    import tempfile

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(isolated_user_models))

    source = make_package(tmp_path / "src", id="ro", version="1.0.0")
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(MedTranslateError, match="Read-only file system") as caught:
        ModelRegistry(builtin_dir=builtin).import_package(source)
    assert str(isolated_user_models) in caught.value.problem and "MEDTRANSLATE_MODELS_DIR" in caught.value.fix


def test_models_import_cli_on_a_full_disk_exits_with_a_message(tmp_path, builtin, monkeypatch, capsys,
                                                               isolated_user_models) -> None:
    from MedTranslateLib.cli.main import main

    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    source = make_untrained_package(tmp_path / "src", id="big", version="1.0.0")  # weights that fit its network

    def full_disk(self: object, *args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ModelRegistry, "_copy_files", full_disk)
    assert main(["models", "import", str(source)]) == 5
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot import big 1.0.0") and "Traceback" not in err
    assert os.listdir(isolated_user_models) == []


def test_remove_that_cannot_delete_leaves_the_package_whole(tmp_path, builtin, monkeypatch,
                                                            isolated_user_models) -> None:
    """Deleting file by file stopped half-way (a read-only folder, Ctrl-C) left a package without its card or
    weights, and a traceback; now the package is moved out of the way in one step, or left untouched."""
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="kept", version="1.0.0"))
    registry.import_package(make_package(tmp_path / "b", id="kept", version="2.0.0"))
    before = {p.name: sorted(os.listdir(p)) for p in isolated_user_models.iterdir()}
    denying = [True]
    _deny(monkeypatch, lambda path: denying[0] and "kept@2.0.0" in path, errno.EACCES)
    with pytest.raises(MedTranslateError, match="Permission denied") as caught:
        registry.remove("kept")
    assert "kept" in caught.value.problem and "Nothing was removed" in caught.value.problem
    denying[0] = False
    assert {p.name: sorted(os.listdir(p)) for p in isolated_user_models.iterdir()} == before  # both whole
    assert [e.version for e in registry.list_models() if e.id == "kept"] == ["1.0.0", "2.0.0"]


def test_remove_interrupted_while_deleting_leaves_no_half_package(tmp_path, builtin, monkeypatch,
                                                                   isolated_user_models) -> None:
    """Ctrl-C while the files are deleted: the package is already out of the registry's sight (no broken
    package without its card), and the next remove sweeps the leftovers."""
    import shutil

    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="gone", version="1.0.0"))
    registry.import_package(make_package(tmp_path / "b", id="other", version="1.0.0"))
    real_rmtree = shutil.rmtree

    def interrupted(path: object, *args: object, **kwargs: object) -> None:
        os.unlink(Path(path) / "model.json")  # one file gone, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.remove("gone")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [e.id for e in registry.list_models() if e.source == "user"] == ["other"]
    assert registry.problems == []
    registry.remove("other")
    assert _visible(isolated_user_models) == []


def test_remove_cli_on_a_read_only_folder_exits_with_a_message(tmp_path, builtin, monkeypatch, capsys,
                                                               isolated_user_models) -> None:
    from MedTranslateLib.cli.main import main

    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    ModelRegistry(builtin_dir=builtin).import_package(make_package(tmp_path / "a", id="ro", version="1.0.0"))

    _deny(monkeypatch, lambda path: True, errno.EROFS)
    assert main(["models", "remove", "ro"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot remove ro@1.0.0") and "Traceback" not in err
    assert _visible(isolated_user_models) == ["ro@1.0.0"]


def test_export_into_a_read_only_folder_is_one_clear_error(tmp_path, monkeypatch) -> None:
    """export_package made its staging folder outside its error handling: a read-only destination folder was an
    OSError traceback, not the OutputError it gives for a full disk."""
    import tempfile

    from MedTranslateLib.errors import OutputError

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(OutputError, match="Cannot write the model package .*Read-only file system"):
        make_package(tmp_path / "out", id="ro", version="1.0.0")
    assert not (tmp_path / "out").exists()


def _local_weights(tmp_path: Path) -> tuple[str, str]:
    """A file:// URL of some weights bytes, and their SHA256."""
    import hashlib

    source = tmp_path / "remote.safetensors"
    source.write_bytes(b"weights" * 100)
    return source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest()


def test_download_into_a_read_only_model_folder_is_one_clear_error(tmp_path, monkeypatch) -> None:
    """The download's temporary file was made outside its error handling: a read-only model folder was an OSError
    traceback out of 'translate -m' for a package whose card gives weights.url."""
    import tempfile

    from MedTranslateLib.models.download import download_file

    url, sha = _local_weights(tmp_path)

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "models"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(MedTranslateError, match="Read-only file system") as caught:
        download_file(url, tmp_path / "models" / "w.safetensors", sha)
    assert "MEDTRANSLATE_MODELS_DIR" in caught.value.fix


def test_download_onto_a_full_disk_says_so(tmp_path, monkeypatch) -> None:
    """A full disk while the download was written said 'the download was interrupted (OSError)' and to check the
    network connection; it names the disk now, and leaves no partial file."""
    import MedTranslateLib.models.download as download

    url, sha = _local_weights(tmp_path)
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle: object) -> None:
            self.handle = handle

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    target = tmp_path / "models" / "w.safetensors"
    with pytest.raises(MedTranslateError, match="No space left on device") as caught:
        download.download_file(url, target, sha)
    assert "network" not in caught.value.message
    assert os.listdir(target.parent) == []


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_model_id_is_not_shadowed_by_a_same_named_non_package_here(tmp_path, builtin, monkeypatch, kind) -> None:
    """'-m builtin-ct' in a folder that holds a data folder (or file) named 'builtin-ct' failed with 'No model card
    at builtin-ct/model.json': the id is a registry model, and that folder is no package."""
    work = tmp_path / "work"
    (work / "builtin-ct" if kind == "folder" else work).mkdir(parents=True)
    if kind == "file":
        (work / "builtin-ct").write_text("notes")
    monkeypatch.chdir(work)
    package = ModelRegistry(builtin_dir=builtin).resolve("builtin-ct")
    assert package.path == builtin / "builtin-ct"
    with pytest.raises(ModelError, match="No model card at|neither a package folder"):  # a path meant as one
        ModelRegistry(builtin_dir=builtin).resolve("./builtin-ct")


def test_an_oversized_extra_file_in_a_package_folder_is_named_as_such(tmp_path, builtin, isolated_user_models) -> None:
    """A 2 MB figure.png beside the card was refused as 'The weights file .../figure.png ... This is not a
    MedTranslate weights file', which sent the user looking at the wrong file."""
    source = make_package(tmp_path / "src", id="figure", version="1.0.0")
    (source / "figure.png").write_bytes(b"\x89PNG" + bytes(2 * 1024 * 1024))
    with pytest.raises(ModelError) as caught:
        ModelRegistry(builtin_dir=builtin).import_package(source)
    assert "figure.png" in caught.value.problem and "weights file" not in caught.value.message
    assert "figure.png" in caught.value.fix
    assert os.listdir(isolated_user_models) == []


def test_an_unreadable_model_folder_is_reported_not_a_traceback(tmp_path, builtin, monkeypatch, capsys,
                                                               isolated_user_models) -> None:
    """A model folder that cannot be listed (MEDTRANSLATE_MODELS_DIR pointing at another user's folder) was a
    PermissionError traceback out of 'models list' and of every '-m ID', even of a built-in model."""
    from MedTranslateLib.cli.main import main

    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    real_iterdir = Path.iterdir

    def denied(self: Path):
        if self == isolated_user_models:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    registry = ModelRegistry(builtin_dir=builtin)
    assert [e.id for e in registry.list_models()] == ["builtin-ct"]
    assert [(p.path, p.source) for p in registry.problems] == [(isolated_user_models, "user")]
    assert "Permission denied" in registry.problems[0].problem and "MEDTRANSLATE_MODELS_DIR" in registry.problems[0].fix
    assert registry.resolve("builtin-ct").card.id == "builtin-ct"
    assert main(["models", "list"]) == 0
    assert "Permission denied" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_a_package_folder_of_links_imports_and_translates(tmp_path, builtin, isolated_user_models) -> None:
    """A Hugging Face hub snapshot (or a DVC / git-annex checkout) holds links to its files: its weights were
    refused as 'not a regular file' with the fix 'Re-import the package', which could never help. The linked
    weights are still checked against the card's SHA256, and the import holds plain files."""
    from MedTranslateLib.models.package import open_package

    blobs = make_package(tmp_path / "blobs", id="linked", version="1.0.0")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("model.json", "weights.safetensors", "README.md"):
        (snapshot / name).symlink_to(blobs / name)
    assert open_package(snapshot).load_state_dict()  # used in place
    entry = ModelRegistry(builtin_dir=builtin).import_package(snapshot)
    # linked extras stay behind (a link could lead to any file of the user's): the card and the weights are copied
    assert sorted(p.name for p in entry.path.iterdir()) == ["model.json", "weights.safetensors"]
    assert not any(p.is_symlink() for p in entry.path.iterdir())
    (blobs / "weights.safetensors").write_bytes(b"replaced")  # what a link leads to is verified like a file
    with pytest.raises(ModelError, match="bytes; the card says"):
        open_package(snapshot).load_state_dict()


@pytest.mark.parametrize("name", ["builtin-ct", "builtin-ct@1.0.0", "missing.zip"])
def test_import_of_nothing_does_not_ask_for_a_model_id(tmp_path, builtin, monkeypatch, capsys, name) -> None:
    """'models import builtin-ct' said 'No model package at builtin-ct. Give a package folder, a .zip file or a
    model id.': a model id was given, and import takes none."""
    from MedTranslateLib.cli.main import main

    monkeypatch.setattr("MedTranslateLib.models.registry.BUILTIN_DIR", builtin)
    monkeypatch.chdir(tmp_path)
    assert main(["models", "import", name]) == 4
    err = capsys.readouterr().err
    assert f"No model package at {name}: no such file or folder to import" in err and "model id" not in err
    assert ".zip file or its folder" in err
    with pytest.raises(ModelError, match="no such file or folder to import"):
        ModelRegistry(builtin_dir=builtin).import_package(name)


def test_a_package_with_a_long_name_can_be_removed(tmp_path, builtin, isolated_user_models) -> None:
    """The hidden name a package is moved to while it is deleted must fit the file system's 255 bytes whenever the
    package's own name does."""
    version = "1.0.0-" + "a" * 234  # 'long@<version>' is 245 characters
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="long", version=version))
    assert registry.remove("long") == [isolated_user_models / f"long@{version}"]
    assert os.listdir(isolated_user_models) == []


def test_a_package_folder_that_cannot_be_looked_into_is_a_problem_not_a_traceback(tmp_path, builtin, monkeypatch,
                                                                                 isolated_user_models) -> None:
    """One package folder without permission (made by another user, e.g. an import under sudo with a private
    umask) made the whole listing a PermissionError traceback; it is listed as a problem, the others still work."""
    registry = ModelRegistry(builtin_dir=builtin)
    registry.import_package(make_package(tmp_path / "a", id="fine", version="1.0.0"))
    private = isolated_user_models / "private@1.0.0"
    private.mkdir()
    real_exists = Path.exists

    def denied(self: Path, *args: object, **kwargs: object) -> bool:
        if self.parent == private:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", denied)
    assert [e.id for e in registry.list_models()] == ["builtin-ct", "fine"]
    assert [p.path for p in registry.problems] == [private] and "Permission denied" in registry.problems[0].problem
    assert registry.problems[0].claims == (("private", "1.0.0"),)


def test_an_overwriting_import_that_cannot_move_the_old_copy_says_import_not_output(tmp_path, builtin, monkeypatch,
                                                                                   isolated_user_models) -> None:
    """``models import --overwrite`` whose old copy cannot be moved aside (a folder without write permission) got
    the translate outputs' message ("Cannot put the output in place ... is another process writing it?"). It is
    the import's own: what could not be imported, why, and that nothing changed."""
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io import atomic

    registry = ModelRegistry(builtin_dir=builtin)
    first = registry.import_package(make_package(tmp_path / "a", id="foo", version="1.0.0"))
    before = sorted(p.name for p in first.path.iterdir())
    real_replace = atomic.replace_file

    def denied(source, target, *args, **kwargs):
        if Path(source) == first.path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic, "replace_file", denied)
    with pytest.raises(OutputError) as caught:
        registry.import_package(make_package(tmp_path / "b", id="foo", version="1.0.0"), overwrite=True)
    message = str(caught.value)
    assert message.startswith("Cannot import foo 1.0.0") and "Nothing was installed" in message, message
    assert "another process" not in message and "output" not in message, message
    assert sorted(p.name for p in first.path.iterdir()) == before
    assert [p.name for p in registry.user_dir.iterdir() if p.name.startswith(".")] == []


def test_an_overwriting_import_that_fails_after_moving_the_old_copy_aside_says_where_it_is(
        tmp_path, builtin, monkeypatch, isolated_user_models) -> None:
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io import atomic

    registry = ModelRegistry(builtin_dir=builtin)
    first = registry.import_package(make_package(tmp_path / "a", id="foo", version="1.0.0"))
    real_replace = atomic.replace_file

    def new_copy_denied(source, target, *args, **kwargs):
        if Path(target) == first.path and ".import-" in Path(source).name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic, "replace_file", new_copy_denied)
    with pytest.raises(OutputError, match=r"^Cannot import foo 1\.0\.0 .*Nothing was installed; the earlier copy "
                                          r"is unchanged\.") as caught:
        registry.import_package(make_package(tmp_path / "b", id="foo", version="1.0.0"), overwrite=True)
    assert "another process" not in str(caught.value)
    assert (first.path / "model.json").is_file()
