"""Soak: 50 consecutive translations in one process with one Translator must not leak memory.

Resident memory (``VmRSS`` of ``/proc/self/status``) after translation 50 may exceed the figure after
translation 5 by less than 10 %. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from packages import make_untrained_package

TRANSLATIONS = 50


def vm_rss_kib() -> int:
    """Resident set size of this process in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _inputs() -> list[sitk.Image]:
    """~48^3 volumes: the same one repeated and several different grids and contents."""
    shapes = [(48, 48, 48), (44, 50, 46), (48, 40, 52), (36, 48, 48)]
    spacings = [(1.0, 1.0, 1.0), (0.8, 1.2, 2.5), (1.5, 1.5, 1.5), (0.7, 0.7, 3.0)]
    return [make_image(shape, spacing=spacing, origin=(i * 3.0, -i, 2.0 * i), seed=i)
            for i, (shape, spacing) in enumerate(zip(shapes, spacings))]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("family, dimensionality, files", [
    ("unet", "2d", False), ("unet", "3d", False), ("diffusion", "2d", False), ("unet", "2d", True)])
def test_fifty_translations_do_not_grow_resident_memory(tmp_path, family, dimensionality, files):
    """One Translator, 50 runs (in memory, or file to file through ``translate_file``)."""
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator, translate_file

    package = make_untrained_package(tmp_path / "pkg", family, dimensionality)
    translator = Translator(open_package(package), "cpu")
    inputs = _inputs()
    paths = []
    for i, image in enumerate(inputs if files else []):
        paths.append(tmp_path / f"in{i}.nrrd")
        sitk.WriteImage(image, str(paths[-1]))
    rss: dict[int, int] = {}
    start = time.perf_counter()
    for index in range(1, TRANSLATIONS + 1):
        which = 0 if index % 2 else (index // 2) % len(inputs)  # same and different inputs
        image = inputs[which]
        if files:
            result = translate_file(paths[which], package, tmp_path / "out.nii.gz", translator=translator)
        else:
            result = translator.translate(image)
        assert result.output.GetSize() == image.GetSize()
        assert np.isfinite(sitk.GetArrayViewFromImage(result.output)).all()
        del result
        rss[index] = vm_rss_kib()
    seconds = time.perf_counter() - start
    growth = (rss[TRANSLATIONS] - rss[5]) / rss[5]
    print(f"\n[soak {family}-{dimensionality}{' files' if files else ''}] VmRSS after 1: {rss[1] / 1024:.1f} MiB, after 5: {rss[5] / 1024:.1f} MiB, "
          f"after 25: {rss[25] / 1024:.1f} MiB, after 50: {rss[50] / 1024:.1f} MiB, growth 5->50: {growth * 100:+.2f} %, "
          f"max {max(rss.values()) / 1024:.1f} MiB, {TRANSLATIONS} translations in {seconds:.1f} s")
    assert growth < 0.10


def test_vm_rss_reader_sees_an_allocation():
    """The probe the soak relies on really measures resident memory (fails if it reads the wrong field)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    before = vm_rss_kib()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    after = vm_rss_kib()
    assert after - before > 48 * 1024
    del block
