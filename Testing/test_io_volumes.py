"""Round trips for every file format, masks, atomic writes and output-path guards."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from MedTranslateLib.errors import Cancelled, InputError, OutputError
from MedTranslateLib.io import (
    atomic_output, check_writable, ensure_not_input, read_mask, read_volume, validate_volume, write_volume,
)

FORMATS = ["nii", "nii.gz", "nrrd", "nhdr", "mha", "mhd"]


def oblique_direction(degrees: float = 25.0) -> tuple[float, ...]:
    """A proper rotation about an oblique axis (not a permutation), so every cosine matters."""
    axis = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)
    angle = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return tuple(rotation.ravel())


def odd_image() -> sitk.Image:
    return make_image((7, 9, 11), spacing=(0.7, 1.3, 2.1), origin=(-12.5, 7.25, 3.3), direction=oblique_direction())


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_keeps_geometry_and_values(tmp_path, ext):
    image = odd_image()
    path = write_volume(image, tmp_path / f"out.{ext}")
    back, info = read_volume(path)
    assert_same_geometry(back, image)
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert info.dicom_tags == {} and info.path == str(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("ext", ["NII.GZ", "NII", "MHA", "Mha", "NRRD", "MHD"])
def test_upper_case_suffixes_are_written_under_the_name_given(tmp_path, ext):
    """ITK's writers want lower-case suffixes ("x.NII.GZ" failed only after the whole translation)."""
    image = odd_image()
    path = write_volume(image, tmp_path / f"out.{ext}")
    assert path.name == f"out.{ext}" and path.is_file()
    back, _ = read_volume(path)
    assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("name", ["out.Nii", "out.Nii.gz", "out.nii.GZ"])
def test_mixed_case_nifti_names_are_refused_before_writing(tmp_path, name):
    with pytest.raises(OutputError, match="mixed-case"):
        check_writable(tmp_path / name)


def test_mhd_writes_its_raw_file_with_the_right_name(tmp_path):
    write_volume(odd_image(), tmp_path / "vol.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mhd", "vol.raw"]
    assert "ElementDataFile = vol.raw" in (tmp_path / "vol.mhd").read_text()


def test_integer_input_is_cast_to_float32(tmp_path):
    image = sitk.Cast(make_image((5, 6, 7)), sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "int.nii.gz"))
    back, info = read_volume(tmp_path / "int.nii.gz")
    assert back.GetPixelID() == sitk.sitkFloat32 and info.format == "nifti"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image).astype(np.float32))


@pytest.mark.parametrize("ext", ["nrrd", "mha", "nhdr"])
def test_provenance_stored_in_header(tmp_path, ext):
    provenance = {"model_id": "demo-unet", "model_version": "1.2.0", "model_sha256": "ab" * 32}
    path = write_volume(odd_image(), tmp_path / f"p.{ext}", description="SYNTHETIC CT from MR", provenance=provenance)
    header = sitk.ReadImage(str(path))
    record = json.loads(header.GetMetaData("MedTranslate_Provenance"))
    assert record["model_sha256"] == "ab" * 32 and record["SYNTHETIC"] is True
    assert header.GetMetaData("MedTranslate_model_id") == "demo-unet"
    assert "SYNTHETIC" in header.GetMetaData("ITK_FileNotes")


def test_provenance_in_nifti_description(tmp_path):
    provenance = {"model_id": "demo-unet", "model_version": "1.2", "model_sha256": "0123456789ab" + "f" * 52}
    path = write_volume(odd_image(), tmp_path / "p.nii.gz", provenance=provenance)
    notes = sitk.ReadImage(str(path)).GetMetaData("descrip")
    assert "SYNTHETIC" in notes and "demo-unet" in notes and "1.2" in notes and "sha256:0123456789ab" in notes


def test_writer_does_not_change_caller_metadata(tmp_path):
    image = odd_image()
    write_volume(image, tmp_path / "p.mha", provenance={"model_id": "x"})
    assert "MedTranslate_Provenance" not in image.GetMetaDataKeys()


def test_validate_volume_accepts_good_and_refuses_bad():
    validate_volume(make_image())
    flat = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    with pytest.raises(InputError, match="all zero"):
        validate_volume(flat)
    sheared = make_image((4, 5, 6), direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match="non-orthogonal"):
        validate_volume(sheared, "mask")


# ---------------------------------------------------------------------------------------- masks
def test_read_mask_binarises_on_reference_grid(tmp_path):
    image = odd_image()
    labels = sitk.Cast(image > 200, sitk.sitkUInt8) * 3
    sitk.WriteImage(labels, str(tmp_path / "m.nrrd"))
    mask = read_mask(tmp_path / "m.nrrd", image)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(mask, image)
    values = np.unique(sitk.GetArrayFromImage(mask))
    assert values.tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64])
def test_read_mask_of_any_pixel_type_is_its_non_zero_voxels(tmp_path, dtype):
    """Integer masks are read in their own type (no float32 copy, finiteness check or rounding), float masks as
    float32 with NaN / Inf taken as outside: either way the mask is the label image's non-zero voxels."""
    image = odd_image()
    values = sitk.GetArrayFromImage(image)
    labels = np.where(values > 200, np.arange(values.size).reshape(values.shape) % 4, 0)
    if dtype in (np.uint32, np.int32):
        labels = labels * (2**24 + 1)  # beyond float32's whole numbers: still set
    array = labels.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        array[labels == 0] = np.nan
        array.reshape(-1)[:3] = (np.inf, -np.inf, 0.0)
    stored = sitk.GetImageFromArray(array)
    stored.CopyInformation(image)
    sitk.WriteImage(stored, str(tmp_path / "m.nrrd"))
    mask = read_mask(tmp_path / "m.nrrd", image)
    assert mask.GetPixelID() == sitk.sitkUInt8
    expected = (labels != 0) & np.isfinite(array)
    assert np.array_equal(sitk.GetArrayFromImage(mask), expected.astype(np.uint8))
    if dtype in (np.int8, np.int16, np.int32):
        array.reshape(-1)[5] = -2
        stored = sitk.GetImageFromArray(array)
        stored.CopyInformation(image)
        sitk.WriteImage(stored, str(tmp_path / "negative.nrrd"))
        with pytest.raises(InputError, match=r"not a mask") as info:
            read_mask(tmp_path / "negative.nrrd", image)
        assert f"(range -2 to {float(array.max()):g})" in str(info.value)


def test_read_mask_off_grid_says_how(tmp_path):
    image = odd_image()
    mask = sitk.Cast(image > 200, sitk.sitkUInt8)
    mask.SetSpacing((0.7, 1.3, 2.5))
    sitk.WriteImage(mask, str(tmp_path / "m.nii.gz"))
    with pytest.raises(InputError, match="spacing") as info:
        read_mask(tmp_path / "m.nii.gz", image)
    assert "Resample" in str(info.value)
    small = sitk.Cast(make_image((5, 5, 5)) > 200, sitk.sitkUInt8)
    sitk.WriteImage(small, str(tmp_path / "s.nii.gz"))
    with pytest.raises(InputError, match="size"):
        read_mask(tmp_path / "s.nii.gz", image)


def test_read_mask_within_tolerance_snaps_to_reference(tmp_path):
    image = odd_image()
    mask = sitk.Cast(image > 200, sitk.sitkUInt8)
    mask.SetOrigin(tuple(o + 1e-7 for o in image.GetOrigin()))
    sitk.WriteImage(mask, str(tmp_path / "m.mha"))
    assert read_mask(tmp_path / "m.mha", image).GetOrigin() == image.GetOrigin()


def test_empty_mask_refused(tmp_path):
    image = odd_image()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(tmp_path / "m.nii.gz"))
    with pytest.raises(InputError, match="empty"):
        read_mask(tmp_path / "m.nii.gz", image)


@pytest.mark.parametrize("background, inside", [(-1.0, 1.0), (0.001, 0.97)], ids=["minus-one", "probability"])
def test_a_mask_that_is_not_a_mask_is_refused(tmp_path, background, inside):
    """A mask with -1 outside, or a probability map, had every voxel non-zero: the whole grid was taken as body."""
    image = odd_image()
    array = np.where(sitk.GetArrayFromImage(image) > 200, inside, background).astype(np.float32)
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "m.nii.gz"))
    with pytest.raises(InputError, match="not a mask"):
        read_mask(tmp_path / "m.nii.gz", image)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_an_image_given_as_the_mask_is_refused_and_a_label_map_is_not(tmp_path, dtype):
    """A scan chosen as the mask (whole numbers of 0 or more: an MR in int16) had every voxel non-zero and made a
    meaningless translation; a label map of up to MAX_MASK_LABELS labels, numbered up to 2035 as FreeSurfer's
    are, is a mask."""
    from MedTranslateLib.io.volumes import MAX_MASK_LABELS

    image = odd_image()
    scan = np.random.default_rng(0).integers(0, 3000, sitk.GetArrayViewFromImage(image).shape).astype(dtype)
    stored = sitk.GetImageFromArray(scan)
    stored.CopyInformation(image)
    sitk.WriteImage(stored, str(tmp_path / "scan.nrrd"))
    with pytest.raises(InputError, match=r"holds [\d,]+ different values .*looks like an image") as info:
        read_mask(tmp_path / "scan.nrrd", image)
    assert info.value.fix.startswith("Give the mask")
    labels = np.linspace(2035, 2035 - MAX_MASK_LABELS + 2, MAX_MASK_LABELS - 1).astype(dtype)
    label_map = np.resize(labels, scan.shape).astype(dtype)
    label_map.reshape(-1)[0] = 0
    stored = sitk.GetImageFromArray(label_map)
    stored.CopyInformation(image)
    sitk.WriteImage(stored, str(tmp_path / "labels.nrrd"))
    assert sitk.GetArrayViewFromImage(read_mask(tmp_path / "labels.nrrd", image)).sum() == label_map.size - 1


# ------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), Cancelled()])
def test_atomic_output_leaves_nothing_on_failure(tmp_path, failure):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(type(failure)):
        with atomic_output(target) as temp:
            assert temp.parent.parent == tmp_path and temp.name == "out.nii.gz"
            sitk.WriteImage(make_image((3, 4, 5)), str(temp))
            raise failure
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_old_file_until_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_output(target) as temp:
            temp.write_text("new")
            raise ValueError("writer failed")
    assert target.read_text() == "old"
    with atomic_output(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_volume_failure_writes_nothing(tmp_path, monkeypatch):
    def broken_writer(*args, **kwargs):
        raise RuntimeError("ITK ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_writer)
    with pytest.raises(OutputError, match="Cannot write"):
        write_volume(odd_image(), tmp_path / "out.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_raise_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_volume(odd_image(), tmp_path / "missing" / "out.nii.gz")
    (tmp_path / "adir.nii.gz").mkdir()
    with pytest.raises(OutputError, match="existing folder"):
        check_writable(tmp_path / "adir.nii.gz")
    with pytest.raises(OutputError, match="unknown output format"):
        check_writable(tmp_path / "out.png")


def test_read_only_folder_raises_output_error(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: simulate a read-only folder
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked) else real_access(p, mode))
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            write_volume(odd_image(), locked / "out.nii.gz")
        with pytest.raises(OutputError, match="not writable"):
            write_volume(odd_image(), locked / "dicom_out")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_ensure_not_input_refuses_overwriting_inputs(tmp_path):
    source = tmp_path / "in.nii.gz"
    write_volume(odd_image(), source)
    with pytest.raises(OutputError, match="overwrite the input"):
        ensure_not_input(tmp_path / "." / "in.nii.gz", [source])
    header = write_volume(odd_image(), tmp_path / "vol.mhd")
    with pytest.raises(OutputError, match="overwrite the input"):
        ensure_not_input(tmp_path / "vol.raw", [header])
    ensure_not_input(tmp_path / "out.nii.gz", [source])  # a different file is fine
    with pytest.raises(OutputError, match="overwrite the input"):
        ensure_not_input(str(tmp_path) + "/", [source])  # a DICOM folder replacing the input's folder


def test_atomic_output_folder_mode(tmp_path):
    target = tmp_path / "series"
    with pytest.raises(Cancelled):
        with atomic_output(str(target) + "/") as temp:
            assert temp.is_dir() and temp.parent == tmp_path
            (temp / "IMG00001.dcm").write_bytes(b"x")
            raise Cancelled()
    assert list(tmp_path.iterdir()) == []
    with atomic_output(str(target) + "/") as temp:
        (temp / "IMG00001.dcm").write_bytes(b"x")
    assert [p.name for p in target.iterdir()] == ["IMG00001.dcm"]


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_truncated_nifti_from_a_full_disk_is_refused(tmp_path, monkeypatch, ext):
    """ITK's NIfTI writer only prints an error when the disk is full: the file is checked before it is kept."""
    real_writer = sitk.WriteImage

    def full_disk_writer(image, path, *args):
        real_writer(image, path, *args)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])

    write_volume(odd_image(), tmp_path / f"complete.{ext}")  # a whole file passes the check
    monkeypatch.setattr(sitk, "WriteImage", full_disk_writer)
    with pytest.raises(OutputError, match="incomplete .is the disk full"):
        write_volume(odd_image(), tmp_path / f"out.{ext}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"complete.{ext}"]


def test_output_data_file_never_overwrites_an_input_data_file(tmp_path):
    header = write_volume(odd_image(), tmp_path / "scan.mhd")  # writes scan.raw
    with pytest.raises(OutputError, match="overwrite the input .*scan.raw"):
        ensure_not_input(tmp_path / "scan.nhdr", [header])  # would write scan.raw too
    ensure_not_input(tmp_path / "other.nhdr", [header])


@pytest.mark.parametrize("header_name,line", [("input.mhd", "ElementDataFile = {}"), ("input.nhdr", "data file: {}")])
def test_an_input_whose_header_names_another_data_file_keeps_it(tmp_path, header_name, line):
    """`input.mhd` reading `synth.raw`: translating it to `synth.mhd` wrote the synthetic voxels into synth.raw, so
    the input became the output, without a word."""
    written = write_volume(odd_image(), tmp_path / f"tmp{Path(header_name).suffix}")  # tmp.mhd + tmp.raw
    text = written.read_text(encoding="latin-1")
    key = line.split("{}")[0]
    header = tmp_path / header_name
    header.write_text("\n".join(line.format("synth.raw") if entry.startswith(key) else entry
                                for entry in text.splitlines()) + "\n", encoding="latin-1")
    (tmp_path / "tmp.raw").rename(tmp_path / "synth.raw")
    written.unlink()
    before = (tmp_path / "synth.raw").read_bytes()
    image, _ = read_volume(header)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(odd_image()))
    for output in ("synth.mhd", "synth.nhdr", "synth.raw"):
        with pytest.raises(OutputError, match="overwrite the input .*synth.raw"):
            ensure_not_input(tmp_path / output, [header])
    ensure_not_input(tmp_path / "other.mhd", [header])
    assert (tmp_path / "synth.raw").read_bytes() == before


def test_the_data_files_a_header_names(tmp_path):
    from MedTranslateLib.io.headers import named_data_files

    def names(file_name, text):
        (tmp_path / file_name).write_text(text, encoding="latin-1")
        return [p.name for p in named_data_files(tmp_path / file_name)]

    assert names("a.mhd", "NDims = 3\nElementDataFile = data.raw\n") == ["data.raw"]
    assert names("b.mha", "NDims = 3\nElementDataFile = LOCAL\n") == []
    assert names("c.mhd", "NDims = 3\nElementDataFile = LIST\ns1.raw\ns2.raw\n") == ["s1.raw", "s2.raw"]
    assert names("d.nhdr", "NRRD0004\ndata file: slice%03d.raw 1 3 1\n") == [
        "slice001.raw", "slice002.raw", "slice003.raw"]
    assert names("e.nhdr", "NRRD0004\ndatafile: LIST\nx.raw\ny.raw\n") == ["x.raw", "y.raw"]
    assert names("f.nrrd", "NRRD0004\ntype: short\n\n") == []
    assert named_data_files(tmp_path / "missing.mhd") == [] and named_data_files(tmp_path / "x.nii.gz") == []


def test_one_header_parser_serves_the_size_check_and_the_input_guard(tmp_path):
    """NRRD fields come in any order (``data file`` before ``encoding``); a MetaImage header ends at its
    ElementDataFile line, where its data starts."""
    from MedTranslateLib.io.headers import read_text_header

    nhdr = tmp_path / "a.nhdr"
    nhdr.write_text("NRRD0004\ndata file: a.raw.gz\nencoding: gzip\nkey:=value\n\nignored: x\n")
    header = read_text_header(nhdr)
    assert header.values == {"data file": "a.raw.gz", "encoding": "gzip"}
    assert header.single_data_file == tmp_path / "a.raw.gz" and header.data_files == [tmp_path / "a.raw.gz"]
    mha = tmp_path / "b.mha"
    mha.write_bytes(b"NDims = 3\nElementDataFile = LOCAL\n\x00\x01=\x02")
    header = read_text_header(mha)
    assert header.holds_its_data and header.length == len(b"NDims = 3\nElementDataFile = LOCAL\n")
    assert header.single_data_file is None and header.data_files == []
    listed = tmp_path / "c.mhd"
    listed.write_text("ElementDataFile = LIST 2D\ns1.raw\ns2.raw\n")
    assert read_text_header(listed).single_data_file is None


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Cancelled])
def test_output_group_keeps_both_files_or_neither(tmp_path, interrupt):
    from MedTranslateLib.io import output_group

    with pytest.raises(interrupt):
        with output_group():
            write_volume(odd_image(), tmp_path / "sct.nii.gz")
            write_volume(odd_image(), tmp_path / "std.nii.gz")
            raise interrupt()
    assert list(tmp_path.iterdir()) == []  # no file, no hidden staging folder
    with output_group():
        write_volume(odd_image(), tmp_path / "sct.nii.gz")
        write_volume(odd_image(), tmp_path / "dicom_std")
        assert list(tmp_path.glob("sct.nii.gz")) == []  # not in place before the group ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom_std", "sct.nii.gz"]


def test_mask_grid_message_has_plain_numbers(tmp_path):
    image = odd_image()
    mask = sitk.Cast(image > 200, sitk.sitkUInt8)
    mask.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(mask, str(tmp_path / "m.nrrd"))
    with pytest.raises(InputError, match=r"origin \(0, 0, 0\) vs \(-12.5, 7.25, 3.3\)") as info:
        read_mask(tmp_path / "m.nrrd", image)
    assert "np.float64" not in str(info.value)


def test_float_nifti_voxels_read_by_medtranslate_equal_itks(tmp_path):
    """Float NIfTI voxels are read by MedTranslate itself (ITK's reader hides NaN/Inf as 0): values, intensity
    scaling (scl_slope/scl_inter, applied in double precision as ITK does) and geometry equal ITK's."""
    import gzip
    import struct

    image = odd_image()
    image = sitk.Cast(image, sitk.sitkFloat32) * 0.37 + 5.25
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat64), str(tmp_path / "b.nii"))
    raw = bytearray(gzip.open(tmp_path / "a.nii.gz").read())
    raw[112:120] = struct.pack("<2f", 2.5, -7.0)
    (tmp_path / "c.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    for name in ("a.nii.gz", "b.nii", "c.nii.gz"):
        ours, _ = read_volume(tmp_path / name)
        itk = sitk.Cast(sitk.ReadImage(str(tmp_path / name)), sitk.sitkFloat32)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itk))
        assert_same_geometry(ours, itk)


def _patched_nifti(source, target, **fields) -> None:
    """Copy a little-endian NIfTI-1 file, overwriting header fields (vox_offset, scl_slope, scl_inter)."""
    import gzip
    import struct

    raw = bytearray(gzip.open(source).read() if str(source).endswith(".gz") else open(source, "rb").read())
    offsets = {"vox_offset": 108, "scl_slope": 112, "scl_inter": 116}
    for name, value in fields.items():
        raw[offsets[name]:offsets[name] + 4] = struct.pack("<f", value)
    data = bytes(raw)
    target.write_bytes(gzip.compress(data) if str(target).endswith(".gz") else data)


@pytest.mark.parametrize("fields", [dict(scl_slope=0.0, scl_inter=5.0), dict(scl_slope=2.0, scl_inter=float("nan")),
                                    dict(scl_slope=float("nan"), scl_inter=3.0)],
                         ids=["slope-0", "inter-nan", "slope-nan"])
def test_nifti_scaling_rules_follow_itk(tmp_path, fields):
    image = sitk.Cast(odd_image(), sitk.sitkFloat32)
    sitk.WriteImage(image, str(tmp_path / "a.nii"))
    _patched_nifti(tmp_path / "a.nii", tmp_path / "b.nii", **fields)
    ours, _ = read_volume(tmp_path / "b.nii")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours),
                                  sitk.GetArrayFromImage(sitk.Cast(sitk.ReadImage(str(tmp_path / "b.nii")),
                                                                   sitk.sitkFloat32)))


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_a_scaled_integer_nifti_is_read_with_its_scaling_not_refused_as_truncated(tmp_path, ext):
    """ITK reports int16 voxels with scl_slope/scl_inter as float32, so the size check expected twice the bytes the
    file holds and refused it (CT from dcm2niix is often stored so)."""
    stored = sitk.Cast(odd_image(), sitk.sitkInt16)
    sitk.WriteImage(stored, str(tmp_path / f"raw.{ext}"))
    _patched_nifti(tmp_path / f"raw.{ext}", tmp_path / f"scaled.{ext}", scl_slope=2.0, scl_inter=-1024.0)
    image, _ = read_volume(tmp_path / f"scaled.{ext}")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                  sitk.GetArrayFromImage(stored).astype(np.float64) * 2 - 1024)
    truncated = tmp_path / f"short.{ext}"
    data = (tmp_path / f"scaled.{ext}").read_bytes()
    truncated.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError, match="truncated"):
        read_volume(truncated)


def test_small_and_odd_nifti_files_still_show_their_nan(tmp_path):
    """A NIfTI-1 file shorter than a NIfTI-2 header, or with vox_offset 0 (niftilib reads from 352), is read by
    MedTranslate too: its NaN is refused, not zeroed by ITK."""
    tiny = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    tiny[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(tiny), str(tmp_path / "tiny.nii"))
    assert (tmp_path / "tiny.nii").stat().st_size < 540
    with pytest.raises(InputError, match="1 NaN"):
        read_volume(tmp_path / "tiny.nii")
    _patched_nifti(tmp_path / "tiny.nii", tmp_path / "zero_offset.nii", vox_offset=0.0)
    with pytest.raises(InputError, match="1 NaN"):
        read_volume(tmp_path / "zero_offset.nii")


def test_a_stream_longer_than_its_header_declares_is_read_in_bounded_pieces(tmp_path):
    """A small .nii.gz whose gzip stream inflates to far more than its voxels: only the declared bytes are inflated,
    in bounded pieces (hostile files cannot exhaust memory)."""
    import gzip

    from MedTranslateLib.io.data_size import _file_bytes

    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)), str(tmp_path / "a.nii"))
    (tmp_path / "long.nii.gz").write_bytes(gzip.compress((tmp_path / "a.nii").read_bytes() + bytes(64 << 20)))
    assert (tmp_path / "long.nii.gz").stat().st_size < 200_000
    pieces = list(_file_bytes(tmp_path / "long.nii.gz", 352 + 96, chunk=1 << 16))
    assert sum(map(len, pieces)) == 352 + 96 and max(map(len, pieces)) <= 1 << 16
    image, _ = read_volume(tmp_path / "long.nii.gz")
    assert sitk.GetArrayFromImage(image).sum() == sum(range(24))


def test_a_float_mask_with_nan_outside_is_read_as_outside_and_messages_name_the_role(tmp_path):
    image = odd_image()
    array = np.where(sitk.GetArrayFromImage(image) > 200, 1.0, np.nan).astype(np.float32)
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "m.nii.gz"))
    binary = sitk.GetArrayFromImage(read_mask(tmp_path / "m.nii.gz", image))
    np.testing.assert_array_equal(binary, (sitk.GetArrayFromImage(image) > 200).astype(np.uint8))
    with pytest.raises(InputError, match="The reference 'm.nii.gz' contains"):
        read_volume(tmp_path / "m.nii.gz", role="reference")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_dicom_series_folder_gets_the_permissions_of_a_new_folder(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "series", folder=True) as staging:
            (staging / "1.dcm").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "series").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_reports_written_atomically_are_readable_by_others(tmp_path):
    from MedTranslateLib.io.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.csv", "case,mae\n")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
