"""Model packages: export, safe loading (size, SHA256, safetensors only), corrupt and pickled weights,
legacy .pt conversion."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from MedTranslateLib.errors import ModelError, OutputError
from MedTranslateLib.models.export import export_package, import_legacy_checkpoint
from MedTranslateLib.models.package import open_package
from packages import make_test_card
from test_models_util import make_package, tiny_state


def test_export_and_load_roundtrip(tmp_path):
    folder = make_package(tmp_path / "pkg")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.json", "weights.safetensors"]
    card = json.loads((folder / "model.json").read_text())
    data = (folder / "weights.safetensors").read_bytes()
    assert card["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert card["weights"]["size_bytes"] == len(data) and card["weights"]["dtype"] == "float32"
    assert "NOT FOR CLINICAL USE" in (folder / "README.md").read_text()
    state = open_package(folder).load_state_dict()
    for name, tensor in tiny_state().items():
        assert torch.equal(state[name], tensor)
    assert not list(tmp_path.glob(".*")), "no temporary folder left behind"


def test_export_half_records_dtype(tmp_path):
    folder = export_package(tiny_state(), make_test_card(), tmp_path / "half", half=True)
    package = open_package(folder)
    assert package.card.to_dict()["weights"]["dtype"] == "float16"
    state = package.load_state_dict()
    assert state["generator.conv.weight"].dtype == torch.float16
    assert state["generator.steps"].dtype == torch.int64


def test_export_zip_and_reexport_replaces(tmp_path):
    path = export_package(tiny_state(), make_test_card(), tmp_path / "model", as_zip=True)
    assert path == tmp_path / "model.zip"
    assert open_package(path).load_state_dict()["generator.conv.bias"].shape == (4,)
    again = export_package(tiny_state(), make_test_card(version="0.2.0"), path, as_zip=True)
    assert open_package(again).card.version == "0.2.0"


def test_export_refuses_invalid_card_and_foreign_folder(tmp_path):
    with pytest.raises(ModelError, match="family"):
        export_package(tiny_state(), make_test_card(family="gpt"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(OutputError):
        export_package(tiny_state(), make_test_card(), foreign)
    assert (foreign / "holiday.jpg").exists()


def test_sha256_mismatch_refused(tmp_path):
    folder = make_package(tmp_path / "pkg")
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as info:
        open_package(folder).load_state_dict()
    message = str(info.value)
    assert "do not match the card's SHA256" in message and "re-download or re-import" in message


def test_size_mismatch_refused_before_hashing(tmp_path):
    folder = make_package(tmp_path / "pkg")
    with (folder / "weights.safetensors").open("ab") as handle:
        handle.write(b"\0" * 10)
    with pytest.raises(ModelError, match="the card says"):
        open_package(folder).load_state_dict()


def _package_with_weights(folder: Path, data: bytes) -> Path:
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(data)
    card = make_test_card()
    card["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    folder = _package_with_weights(tmp_path / "pkg", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        open_package(folder).load_state_dict()


class _Exploit:
    """Unpickling this would create a marker file (proves code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_named_safetensors_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Exploit(marker)})
    pickle.loads(payload)  # sanity: the payload really does create the marker when unpickled
    assert marker.exists()
    marker.unlink()
    folder = _package_with_weights(tmp_path / "pkg", payload)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        open_package(folder).load_state_dict()
    assert not marker.exists()


def test_missing_weights_without_url(tmp_path):
    folder = make_package(tmp_path / "pkg")
    (folder / "weights.safetensors").unlink()
    package = open_package(folder)
    assert not package.has_weights()
    with pytest.raises(ModelError, match="no download URL"):
        package.load_state_dict()
    make_package(tmp_path / "other")
    (tmp_path / "other" / "weights.safetensors").rename(folder / "weights_v2.safetensors")  # renamed by hand
    with pytest.raises(ModelError, match=r"the folder holds weights_v2.safetensors: the card's weights.file names"):
        open_package(folder).load_state_dict()


def test_open_package_errors(tmp_path):
    with pytest.raises(ModelError, match="No model package"):
        open_package(tmp_path / "missing")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelError, match="neither a package folder nor a zip"):
        open_package(text)


def test_legacy_checkpoint_conversion(tmp_path):
    pt = tmp_path / "old.pt"
    torch.save(tiny_state(), pt)
    folder = import_legacy_checkpoint(pt, make_test_card(), tmp_path / "converted")
    state = open_package(folder).load_state_dict()
    assert torch.equal(state["generator.conv.weight"], tiny_state()["generator.conv.weight"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_legacy_checkpoint_refuses_non_flat_and_pickles(tmp_path):
    nested = tmp_path / "nested.pt"
    torch.save({"model": tiny_state(), "epoch": 3}, nested)
    with pytest.raises(ModelError, match="not a flat tensor dict"):
        import_legacy_checkpoint(nested, make_test_card(), tmp_path / "a")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _Exploit(marker)}))
    with pytest.raises(ModelError, match="cannot be read as a safe tensor checkpoint"):
        import_legacy_checkpoint(evil, make_test_card(), tmp_path / "b")
    assert not marker.exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_safetensors_header_check(tmp_path):
    from MedTranslateLib.models.package import safetensors_header_problem

    good = (make_package(tmp_path / "pkg") / "weights.safetensors").read_bytes()
    assert safetensors_header_problem(good) is None
    assert "header length" in safetensors_header_problem(good[:20])
    assert safetensors_header_problem(b"\x02\0\0\0\0\0\0\0{}") == "it holds no tensors"
    assert "shorter" in safetensors_header_problem(b"abc")


def test_reading_a_small_weights_file_reserves_its_size_not_the_cap(tmp_path):
    """Under an address-space limit (a cluster job, ulimit -v) a small file reads: the reader asks for the file's
    size, not the 2 GiB cap (before: MemoryError from the up-front buffer of read(cap + 1))."""
    import subprocess
    import sys

    small = tmp_path / "weights.safetensors"
    small.write_bytes(b"x" * 1000)
    code = ("import resource, sys\n"
            "from MedTranslateLib.models.package import MAX_WEIGHTS_BYTES, read_file_capped\n"
            "from pathlib import Path\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + MAX_WEIGHTS_BYTES // 2, hard))\n"
            f"print(len(read_file_capped(Path({str(small)!r}), MAX_WEIGHTS_BYTES)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1000", out.stderr[-2000:]


def test_a_weights_file_that_changes_while_read_is_refused(tmp_path, monkeypatch):
    from MedTranslateLib.models.package import read_file_capped

    growing = tmp_path / "weights.safetensors"
    growing.write_bytes(b"x" * 100)
    real_open = Path.open

    def open_after_a_write(self, *args, **kwargs):
        with real_open(self, "ab") as handle:  # another process appends between the size check and the read
            handle.write(b"y" * 10)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_after_a_write)
    with pytest.raises(ModelError, match="changed while it was read"):
        read_file_capped(growing, 10_000)


def test_a_package_whose_name_is_as_long_as_the_file_system_allows_is_exported(tmp_path):
    """The hidden staging folder beside it was named '.<name>.<random>' and could not be created for a long name."""
    name = "m" * 250
    folder = export_package(tiny_state(), make_test_card(), tmp_path / name)
    assert folder.name == name and (folder / "model.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no staging folder left behind
