"""Download of a file (missing weights: a card may give ``weights.url``), fetched with urllib with a size cap,
progress callback, SHA256 verification and an atomic rename. :meth:`ModelPackage.ensure_weights` decides where."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from MedTranslateLib.errors import ModelError, OutputError
from MedTranslateLib.io.atomic import replace_file
from MedTranslateLib.io.path_checks import staging_prefix
from MedTranslateLib.models.paths import MAX_WEIGHTS_BYTES

#: Seconds without data before a download is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 256 * 1024


class _WriteFailed(Exception):
    """Writing the download to disk failed (not the network): carries the ``OSError``."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _folder_error(target: Path, exc: OSError) -> OutputError:
    """A full disk or a read-only folder while the download is written."""
    return OutputError(f"Cannot save the downloaded weights in {target.parent}: {exc.strerror or exc}.",
                       "Free some disk space or make your model folder writable, or set MEDTRANSLATE_MODELS_DIR "
                       "to a folder you can write to.")


def _write(out: object, chunk: bytes) -> None:
    try:
        out.write(chunk)  # type: ignore[attr-defined]
    except OSError as exc:  # the disk, not the network: not to be reported as an interrupted download
        raise _WriteFailed(exc) from None


def download_file(url: str, target: Path, sha256: str, *, expected_size: int | None = None,
                  progress: Callable[[int, int | None], None] | None = None,
                  max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``target`` atomically; refuse more than the cap and a SHA256 mismatch."""
    import urllib.error
    import urllib.request
    from http.client import HTTPException


    cap = min(max_bytes or MAX_WEIGHTS_BYTES, expected_size or MAX_WEIGHTS_BYTES)
    fix = "Check the network connection and the URL, or download the package manually and import it."
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=staging_prefix(target.name), suffix=".part", dir=target.parent)
    except OSError as exc:
        raise _folder_error(target, exc) from None
    temp = Path(temp_name)
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "MedTranslate"})
                with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    length_header = response.headers.get("Content-Length")
                    total = int(length_header) if length_header and length_header.isdigit() else None
                    if total is not None and total > cap:
                        raise ModelError(f"The download {url} is {total} bytes, more than the {cap} expected.",
                                         "The URL does not point at this model's weights; check the card.")
                    while chunk := response.read(_CHUNK):
                        received += len(chunk)
                        if received > cap:
                            raise ModelError(f"The download {url} sent more than the {cap} bytes expected.",
                                             "The URL does not point at this model's weights; check the card.")
                        digest.update(chunk)
                        _write(out, chunk)
                        if progress is not None:
                            progress(received, total)
            except urllib.error.HTTPError as exc:
                raise ModelError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}.", fix) from None
            except urllib.error.URLError as exc:
                raise ModelError(f"Downloading {url} failed: {exc.reason}.", fix) from None
            except (HTTPException, OSError) as exc:
                raise ModelError(f"Downloading {url} failed after {received} bytes: the download was "
                                 f"interrupted ({type(exc).__name__}).", fix) from None
        if total is not None and received != total:
            raise ModelError(f"Downloading {url} stopped after {received} of {total} bytes (truncated).", fix)
        if expected_size is not None and received != expected_size:
            raise ModelError(f"The download {url} is {received} bytes; the card says {expected_size}.",
                             "The file on the server is not this model's weights; check the URL in the card.")
        if digest.hexdigest() != sha256:
            raise ModelError(f"The download {url} does not match the card's SHA256 (expected {sha256}, "
                             f"got {digest.hexdigest()}).",
                             "The server sent a different file: check the URL, or re-download the package.")
        replace_file(temp, target)
    except _WriteFailed as exc:
        raise _folder_error(target, exc.error) from None
    except OSError as exc:  # closing (flushing) the file or moving it into place
        raise _folder_error(target, exc) from None
    finally:
        temp.unlink(missing_ok=True)
    return target
