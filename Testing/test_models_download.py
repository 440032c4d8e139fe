"""Weights download from ``weights.url`` against a local HTTP server on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.package import open_package
from MedTranslateLib.models.registry import ModelRegistry
from test_models_util import make_package

#: path -> (status, body, declared Content-Length)
ROUTES: dict[str, tuple[int, bytes, int]] = {}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        status, body, length = ROUTES.get(self.path, (404, b"not found", 9))
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _remote_package(tmp_path, server, route, *, size=True):
    """A package folder without its weights; the card points at ``server + route``."""
    folder = make_package(tmp_path / "pkg")
    weights = (folder / "weights.safetensors").read_bytes()
    (folder / "weights.safetensors").unlink()
    card = json.loads((folder / "model.json").read_text())
    card["weights"]["url"] = server + route
    if not size:
        del card["weights"]["size_bytes"]
    (folder / "model.json").write_text(json.dumps(card))
    return folder, weights


def test_download_success_with_progress(tmp_path, server, isolated_user_models):
    folder, weights = _remote_package(tmp_path, server, "/ok.safetensors")
    ROUTES["/ok.safetensors"] = (200, weights, len(weights))
    package = open_package(folder)
    seen = []
    path = package.ensure_weights(progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == weights
    assert path.is_relative_to(isolated_user_models) and seen[-1] == (len(weights), len(weights))
    assert open_package(folder).load_state_dict()["generator.conv.bias"].shape == (4,)
    assert not [p for p in path.parent.iterdir() if p.suffix == ".part"]


def test_imported_package_downloads_into_its_folder(tmp_path, server):
    folder, weights = _remote_package(tmp_path, server, "/imported.safetensors")
    ROUTES["/imported.safetensors"] = (200, weights, len(weights))
    registry = ModelRegistry(builtin_dir=tmp_path / "none")
    entry = registry.import_package(folder)
    assert not (entry.path / "weights.safetensors").exists()
    registry.resolve("test-mr-to-ct").load_state_dict()
    assert (entry.path / "weights.safetensors").read_bytes() == weights


def test_download_404(tmp_path, server):
    folder, _ = _remote_package(tmp_path, server, "/missing.safetensors")
    with pytest.raises(ModelError, match="HTTP 404"):
        open_package(folder).ensure_weights()


def test_download_wrong_hash(tmp_path, server, isolated_user_models):
    folder, weights = _remote_package(tmp_path, server, "/wrong.safetensors", size=False)
    other = bytes(reversed(weights))
    ROUTES["/wrong.safetensors"] = (200, other, len(other))
    with pytest.raises(ModelError, match="does not match the card's SHA256"):
        open_package(folder).ensure_weights()
    assert not [p for p in isolated_user_models.rglob("*") if p.is_file()], "nothing kept"


def test_download_truncated(tmp_path, server, isolated_user_models):
    folder, weights = _remote_package(tmp_path, server, "/cut.safetensors", size=False)
    ROUTES["/cut.safetensors"] = (200, weights[: len(weights) // 2], len(weights))
    with pytest.raises(ModelError, match="truncated|interrupted"):
        open_package(folder).ensure_weights()
    assert not [p for p in isolated_user_models.rglob("*") if p.is_file()]


def test_download_larger_than_card_refused(tmp_path, server):
    folder, weights = _remote_package(tmp_path, server, "/big.safetensors")
    big = weights + b"\0" * 100
    ROUTES["/big.safetensors"] = (200, big, len(big))
    with pytest.raises(ModelError, match="more than the"):
        open_package(folder).ensure_weights()


def test_sha256_of_downloaded_file_checked_again_on_load(tmp_path, server):
    folder, weights = _remote_package(tmp_path, server, "/again.safetensors")
    ROUTES["/again.safetensors"] = (200, weights, len(weights))
    path = open_package(folder).ensure_weights()
    path.write_bytes(bytes(reversed(weights)))
    with pytest.raises(ModelError, match="SHA256"):
        open_package(folder).load_state_dict()
    assert hashlib.sha256(path.read_bytes()).hexdigest() != hashlib.sha256(weights).hexdigest()


def test_translate_shows_the_download_of_missing_weights(tmp_path, server, isolated_user_models, capsys):
    """The first use of a model with remote weights was silent for the whole download (Slicer: 'Starting')."""
    from MedTranslateLib.cli.translate import _download_weights

    folder, weights = _remote_package(tmp_path, server, "/shown.safetensors")
    ROUTES["/shown.safetensors"] = (200, weights, len(weights))
    _download_weights(open_package(folder), "jsonl")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["stage"] for e in events} == {"download"} and events[-1]["fraction"] == 1.0
    assert "downloading the weights of test-mr-to-ct" in events[-1]["message"]
    _download_weights(open_package(folder), "jsonl")  # cached now: nothing to show
    assert capsys.readouterr().out == ""
