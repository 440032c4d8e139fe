"""Every kind of broken, hostile or unusable input gives one clear InputError (problem + fix), never a crash."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from MedTranslateLib.errors import InputError
from MedTranslateLib.io import read_volume, write_volume


def expect_input_error(path, *keywords: str, **kwargs) -> InputError:
    """read_volume(path) must raise InputError whose message names every keyword (case-insensitive)."""
    with pytest.raises(InputError) as info:
        read_volume(path, **kwargs)
    message = info.value.message.lower()
    for word in keywords:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    assert info.value.fix, "every input error must say what to do"
    assert "itkexception" not in message and "Traceback" not in message
    return info.value


def mha_header(dims="8 8 8", spacing="1 1 1", matrix="1 0 0 0 1 0 0 0 1", element="MET_FLOAT", extra="") -> str:
    return (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\n"
            f"DimSize = {dims}\n{extra}ElementType = {element}\nElementDataFile = LOCAL\n")


def write_mha(path, header: str, voxels: np.ndarray | None = None) -> None:
    data = (np.random.default_rng(0).normal(100, 20, 512).astype(np.float32) if voxels is None else voxels).tobytes()
    path.write_bytes(header.encode() + data)


def test_missing_file(tmp_path):
    expect_input_error(tmp_path / "nothing.nii.gz", "no such file", "nothing.nii.gz")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    expect_input_error(tmp_path / "empty.nii.gz", "empty")


def test_truncated_nii_gz(tmp_path):
    path = tmp_path / "t.nii.gz"
    sitk.WriteImage(make_image((20, 30, 30)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_input_error(path, "truncated", "t.nii.gz")


def test_truncated_mha(tmp_path):
    path = tmp_path / "t.mha"
    sitk.WriteImage(make_image((10, 12, 14)), str(path), False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    expect_input_error(path, "truncated")


def test_malformed_nrrd_header(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: banana\nsizes: 4 x 4\nencoding: raw\n\n" + bytes(256))
    expect_input_error(path, "cannot read", "nrrd")


def test_text_file_renamed_nii(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("These are my notes, not an image.\n" * 20)
    expect_input_error(path, "cannot read", "nifti")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG....")
    expect_input_error(path, "unknown file type")


def test_2d_image(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "slice.nii.gz"))
    expect_input_error(tmp_path / "slice.nii.gz", "2D")


def test_single_slice_volume(tmp_path):
    sitk.WriteImage(make_image((1, 16, 16)), str(tmp_path / "one.mha"))
    expect_input_error(tmp_path / "one.mha", "single slice")


def test_4d_image(tmp_path):
    series = sitk.JoinSeries([make_image((4, 5, 6), seed=s) for s in range(3)])
    sitk.WriteImage(series, str(tmp_path / "dyn.nii.gz"))
    expect_input_error(tmp_path / "dyn.nii.gz", "4D")


def test_rgb_vector_image(tmp_path):
    rgb = sitk.Compose([make_image((4, 5, 6), seed=s) for s in range(3)])
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    expect_input_error(tmp_path / "rgb.mha", "3 components", "scalar")


def test_constant_volume(tmp_path):
    image = sitk.Image(6, 7, 8, sitk.sitkFloat32) + 42.0
    sitk.WriteImage(image, str(tmp_path / "c.nrrd"))
    expect_input_error(tmp_path / "c.nrrd", "constant", "42")


def test_all_zero_volume(tmp_path):
    sitk.WriteImage(sitk.Image(6, 7, 8, sitk.sitkInt16), str(tmp_path / "z.nii.gz"))
    expect_input_error(tmp_path / "z.nii.gz", "all zero")


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_voxel(tmp_path, bad_value, word):
    array = sitk.GetArrayFromImage(make_image((5, 6, 7)))
    array[2, 3, 4] = bad_value
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nf.mha"))
    expect_input_error(tmp_path / "nf.mha", word, "replace")


@pytest.mark.parametrize("suffix, dtype", [(".nii.gz", np.float32), (".nii", np.float64), (".nii.gz", ">f4")])
def test_non_finite_voxels_of_a_nifti_file_are_found(tmp_path, suffix, dtype):
    """ITK's NIfTI reader returns NaN and Inf as 0: a NaN block inside an MR was translated into bone."""
    array = sitk.GetArrayFromImage(make_image((5, 6, 7))).astype(np.float64)
    array[1:3, 2, 3], array[4, 0, 0] = np.nan, -np.inf
    path = tmp_path / f"nf{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float64 if dtype == np.float64 else np.float32)), str(path))
    if dtype == ">f4":  # a big-endian file, as other writers may produce
        _rewrite_nifti_big_endian(path)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # what ITK makes of it
    expect_input_error(path, "2 NaN and 1 Inf", "replace")
    sitk.WriteImage(make_image((5, 6, 7)), str(tmp_path / "fine.nii.gz"))
    read_volume(tmp_path / "fine.nii.gz")


def _rewrite_nifti_big_endian(path) -> None:
    """Byte-swap a little-endian float32 NIfTI-1 file (header fields and voxels) in place."""
    import struct

    raw = bytearray(gzip.open(path).read())
    header, offset = raw[:348], int(struct.unpack("<f", raw[108:112])[0])
    swapped = bytearray(header)
    layout = "<i10s18sihsB8h3f4h8f3fhBB4f2i80s24s2h6f12f16s4s"
    values = struct.unpack(layout, bytes(header))
    swapped[:] = struct.pack(">" + layout[1:], *values)
    data = np.frombuffer(bytes(raw[offset:]), dtype="<f4").astype(">f4").tobytes()
    with gzip.open(path, "wb") as out:
        out.write(bytes(swapped) + bytes(raw[348:offset]) + data)


@pytest.mark.parametrize("spacing", ["0 1 1", "1 -1.5 1", "1 1 nan"])
def test_bad_spacing(tmp_path, spacing):
    write_mha(tmp_path / "s.mha", mha_header(spacing=spacing))
    expect_input_error(tmp_path / "s.mha", "spacing")


def test_non_orthogonal_direction(tmp_path):
    write_mha(tmp_path / "d.mha", mha_header(matrix="1 0.5 0 0 1 0 0 0 1"))
    expect_input_error(tmp_path / "d.mha", "non-orthogonal")


def test_singular_direction(tmp_path):
    write_mha(tmp_path / "d.mha", mha_header(matrix="1 0 0 1 0 0 0 0 1"))
    error = expect_input_error(tmp_path / "d.mha")
    assert "singular" in error.message.lower() or "direction" in error.message.lower()


def test_gigantic_dims_in_tiny_mha(tmp_path):
    write_mha(tmp_path / "huge.mha", mha_header(dims="100000 100000 100000"))
    expect_input_error(tmp_path / "huge.mha", "voxels", "limit")


def test_large_dims_in_tiny_mha_are_caught_by_size(tmp_path):
    write_mha(tmp_path / "big.mha", mha_header(dims="1000 1000 1000"))  # under the voxel limit, 4 GB declared
    expect_input_error(tmp_path / "big.mha", "declares", "truncated")


def test_gigantic_dims_in_tiny_nhdr(tmp_path):
    (tmp_path / "huge.raw").write_bytes(bytes(4096))
    (tmp_path / "huge.nhdr").write_text(
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 90000 90000 90000\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n"
        "data file: huge.raw\n\n")
    expect_input_error(tmp_path / "huge.nhdr", "voxels", "limit")
    (tmp_path / "big.nhdr").write_text((tmp_path / "huge.nhdr").read_text().replace("90000 90000 90000", "900 900 900"))
    expect_input_error(tmp_path / "big.nhdr", "declares", "truncated")


def test_gigantic_dims_in_tiny_gzip_nifti(tmp_path):
    path = tmp_path / "g.nii.gz"
    sitk.WriteImage(make_image((8, 8, 8)), str(path))
    header = bytearray(gzip.decompress(path.read_bytes()))
    header[42:48] = np.array([1200, 1200, 1200], "<i2").tobytes()  # dim[1..3]: 1.7e9 voxels
    path.write_bytes(gzip.compress(bytes(header)))
    expect_input_error(path, "declares")


def test_custom_voxel_limit(tmp_path):
    sitk.WriteImage(make_image((8, 8, 8)), str(tmp_path / "v.nii"))
    expect_input_error(tmp_path / "v.nii", "limit", max_voxels=100)


def test_uint32_beyond_float32_precision(tmp_path):
    array = np.full((4, 5, 6), 7, np.uint32)
    array[0, 0, 0] = 2**24 + 3
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "u.nrrd"))
    expect_input_error(tmp_path / "u.nrrd", "2**24", "float32")


def test_absurd_float_range(tmp_path):
    array = sitk.GetArrayFromImage(make_image((4, 5, 6)))
    array[0, 0, 0] = 3e20
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "a.mha"))
    expect_input_error(tmp_path / "a.mha", "absurd")


def test_missing_mhd_data_file(tmp_path):
    write_volume(make_image((4, 5, 6)), tmp_path / "v.mhd")
    (tmp_path / "v.raw").unlink()
    expect_input_error(tmp_path / "v.mhd", "missing")


def test_empty_folder(tmp_path):
    expect_input_error(tmp_path, "empty", "folder")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    sitk.WriteImage(make_image((4, 5, 6)), str(tmp_path / "v.nii.gz"))
    expect_input_error(tmp_path, "no dicom series")


def test_bad_input_writes_nothing(tmp_path):
    """A refused input leaves the output folder untouched (read happens before any write)."""
    from MedTranslateLib.io import check_writable, ensure_not_input

    (tmp_path / "in.nii").write_text("garbage")
    out = tmp_path / "out.nii.gz"
    check_writable(out)
    ensure_not_input(out, [tmp_path / "in.nii"])
    with pytest.raises(InputError):
        read_volume(tmp_path / "in.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii"]


@pytest.mark.parametrize("ext", ["mha", "nrrd", "nii.gz"])
def test_truncated_compressed_file(tmp_path, ext):
    path = write_volume(make_image((12, 14, 16)), tmp_path / f"c.{ext}")  # written compressed
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data) // 3])
    expect_input_error(path, "truncated")


def test_corrupt_gzip_stream(tmp_path):
    path = write_volume(make_image((12, 14, 16)), tmp_path / "c.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    expect_input_error(path, "corrupt")


@pytest.mark.parametrize("ext", ["nii.gz", "nrrd"])
def test_complete_gzip_is_checked_from_its_trailer_without_inflating(tmp_path, monkeypatch, ext):
    """A complete single-member gzip stream is recognised from its ISIZE trailer: no second decompression."""
    import MedTranslateLib.io.data_size as data_size

    path = write_volume(make_image((12, 14, 16)), tmp_path / f"c.{ext}")

    def inflate(*args):
        raise AssertionError("the complete file was inflated a second time")

    monkeypatch.setattr(data_size, "inflated_size", inflate)
    image, _ = read_volume(path)
    assert image.GetSize() == (16, 14, 12)


def test_multi_member_gzip_gets_the_full_check_and_reads(tmp_path):
    """Two gzip members (e.g. written by a parallel compressor): the trailer only covers the last one, so the
    reader falls back to inflating every member - and still reads the volume."""
    raw = tmp_path / "v.nii"
    sitk.WriteImage(make_image((12, 14, 16)), str(raw))
    data = raw.read_bytes()
    path = tmp_path / "v.nii.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    image, _ = read_volume(path)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(raw))))
