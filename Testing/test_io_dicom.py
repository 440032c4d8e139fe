"""DICOM output (derived CT/MR series) and DICOM input (series selection, tags)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import make_image
from MedTranslateLib.errors import InputError, OutputError
from MedTranslateLib.io import SourceInfo, read_volume, write_volume
from test_io_volumes import assert_same_geometry, oblique_direction

PROVENANCE = {"model_id": "demo-unet", "model_version": "1.0.0", "model_sha256": "cd" * 32}


def ct_image(shape=(6, 9, 11), seed=0) -> sitk.Image:
    return make_image(shape, spacing=(0.8, 1.1, 2.5), origin=(-40.0, 12.5, -7.75), direction=oblique_direction(), seed=seed)


def dicom_files(folder):
    return sorted(folder.glob("*.dcm"))


def make_dicom_input(folder, image, **tags) -> None:
    """A DICOM 'scanner' series with the given patient/study tags (made with the writer under test)."""
    source = SourceInfo(path="scanner", format="dicom", dicom_tags=tags)
    write_volume(image, folder, source=source, modality="CT", description=tags.get("SeriesDescription", "SCANNER CT"))


def test_ct_round_trip_oblique(tmp_path):
    image = ct_image()
    out = write_volume(image, tmp_path / "sct", modality="CT", description="SYNTHETIC CT from MR (MedTranslate demo)",
                       provenance=PROVENANCE)
    back, info = read_volume(out)
    assert_same_geometry(back, image)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(image)).max() <= 0.5 + 1e-3
    assert info.format == "dicom" and info.dicom_tags["Modality"] == "CT"
    files = dicom_files(out)
    assert len(files) == image.GetSize()[2]
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "SYNTHETIC" in first.SeriesDescription and "SYNTHETIC" in first.DerivationDescription
    assert "demo-unet" in first.DerivationDescription and "cd" * 32 in first.ImageComments
    assert float(first.RescaleSlope) == 1.0 and first.RescaleType == "HU" and first.pixel_array.dtype == np.int16
    assert [float(v) for v in first.PixelSpacing] == [1.1, 0.8]
    assert float(first.SliceThickness) == 2.5 and float(first.SpacingBetweenSlices) == 2.5
    assert "WindowCenter" in first and "WindowWidth" in first
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient],
                               np.asarray(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), atol=1e-9)
    positions = {tuple(float(v) for v in ds.ImagePositionPatient) for ds in datasets}
    assert len(positions) == len(datasets)
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_source_study_and_patient_kept(tmp_path):
    make_dicom_input(tmp_path / "scan", ct_image(), PatientID="P-123", PatientName="Doe^Jane", PatientSex="F",
                     PatientBirthDate="19700101", StudyID="S1", AccessionNumber="ACC9", StudyDate="20250102",
                     StudyTime="101010")
    image, info = read_volume(tmp_path / "scan")
    assert info.dicom_tags["PatientID"] == "P-123" and info.dicom_tags["PatientName"] == "Doe^Jane"
    out = write_volume(image, tmp_path / "sct/", source=info, modality="CT", provenance=PROVENANCE)
    back, out_info = read_volume(out)
    assert_same_geometry(back, image)
    for tag in ("PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID", "StudyID",
                "AccessionNumber", "FrameOfReferenceUID", "StudyDate", "StudyTime"):
        assert out_info.dicom_tags[tag] == info.dicom_tags[tag], tag
    assert out_info.dicom_tags["SeriesInstanceUID"] != info.dicom_tags["SeriesInstanceUID"]
    for k, path in enumerate(dicom_files(out)):
        ds = pydicom.dcmread(path)
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == info.dicom_tags["SeriesInstanceUID"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == info.referenced_instances[k][1]


def test_non_dicom_source_gets_new_study(tmp_path):
    image = ct_image()
    first = read_volume(write_volume(image, tmp_path / "a"))[1].dicom_tags
    second = read_volume(write_volume(image, tmp_path / "b"))[1].dicom_tags
    assert first["StudyInstanceUID"] != second["StudyInstanceUID"]
    assert first["FrameOfReferenceUID"] != second["FrameOfReferenceUID"]
    assert "ReferencedSeriesSequence" not in pydicom.dcmread(dicom_files(tmp_path / "a")[0])


def test_mr_series_keeps_precision(tmp_path):
    image = make_image((5, 8, 9), spacing=(1.0, 1.0, 3.0)) * 0.01  # values about 0..6: needs a fine rescale
    out = write_volume(image, tmp_path / "smr", modality="T2", description="SYNTHETIC T2 from T1")
    back, info = read_volume(out)
    assert_same_geometry(back, image)
    array = sitk.GetArrayFromImage(image)
    step = (array.max() - array.min()) / 65534
    assert np.abs(sitk.GetArrayFromImage(back) - array).max() <= step
    ds = pydicom.dcmread(dicom_files(out)[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in ds.SeriesDescription


def whole_volume_series(array: np.ndarray, scale: str) -> tuple[np.ndarray, float, float, tuple[float, float]]:
    """Stored values, (slope, intercept) and window as the writer computed them from the whole volume in float64."""
    values = array.astype(np.float64)
    if scale == "CT":
        return np.clip(np.rint(values), -32768, 32767).astype(np.int16), 1.0, 0.0, (40.0, 400.0)
    p1, p99 = np.percentile(values, [1, 99])
    window = (float((p1 + p99) / 2), float(max(p99 - p1, 1e-3)))
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros(values.shape, np.int16), 1.0, low, window
    slope, intercept = (high - low) / 65534, (high + low) / 2.0
    stored = np.clip(np.rint((values - intercept) / slope), -32767, 32767).astype(np.int16)
    return stored, slope, intercept, window


def _volume(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    body = sitk.GetArrayFromImage(ct_image((7, 10, 12)))
    halves = np.arange(body.size).reshape(body.shape) % 5 * 0.25  # .25 steps: rint's ties to even too
    return {"ct_int16": np.rint(body * 7 - 1024).astype(np.int16),
            "ct_float": (body * 7 - 1024 + halves).astype(np.float32),
            "ct_beyond_int16": (body * 300 - 35000 + halves).astype(np.float32),
            "mr": (body * 3.1 + rng.uniform(0, 1, body.shape)).astype(np.float32),
            "mr_int16": np.rint(body * 5).astype(np.int16),
            "uncertainty": np.abs(rng.normal(0, 2.5, body.shape)).astype(np.float32),
            "constant": np.full(body.shape, 812.5, np.float64) + (halves > 0.6) * 1e-13}[kind]


@pytest.mark.parametrize("kind", ["ct_int16", "ct_float", "ct_beyond_int16", "mr", "mr_int16", "uncertainty",
                                  "constant"])
def test_series_values_are_those_of_the_whole_volume_in_float64(tmp_path, kind):
    """Rescaled slice by slice, without a float64 copy of the volume, the pixel data, rescale and window of every file
    stay what the whole-volume float64 computation gave (np.percentile window for MR and uncertainty maps)."""
    from MedTranslateLib.io.dicom import _ds_number

    array = _volume(kind)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct_image((7, 10, 12)))
    modality = "MR" if kind.startswith("mr") or kind == "constant" else "CT"
    folder = write_volume(image, tmp_path / kind, modality=modality, uncertainty=kind == "uncertainty")
    stored, slope, intercept, window = whole_volume_series(array, "CT" if modality == "CT" and kind != "uncertainty"
                                                           else "ramp")
    files = dicom_files(folder)
    assert len(files) == array.shape[0]
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.PixelData == stored[k].tobytes(), k
        assert (str(ds.RescaleSlope), str(ds.RescaleIntercept)) == (_ds_number(slope), _ds_number(intercept))
        assert (str(ds.WindowCenter), str(ds.WindowWidth)) == tuple(_ds_number(v) for v in window)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_volume_with_nan_or_inf_is_not_written_as_dicom(tmp_path, bad):
    array = _volume("mr")
    array[3, 4, 5] = bad
    image = sitk.GetImageFromArray(array)
    with pytest.raises(OutputError, match="NaN or Inf"):
        write_volume(image, tmp_path / "out", modality="MR")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32])
def test_window_percentiles_equal_numpys_in_float64(dtype):
    from MedTranslateLib.io.dicom import _percentiles

    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 100, 1001, 4097):
        values = rng.normal(0, 10.0 ** rng.uniform(-3, 4), size) + rng.integers(-5, 6)
        values = values.astype(dtype) if np.issubdtype(dtype, np.floating) else \
            np.clip(np.rint(values), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        assert np.array_equal(_percentiles(values, (1, 99)), np.percentile(values.astype(np.float64), [1, 99]))


def test_a_rescaled_series_reads_as_float32_with_the_float64_values(tmp_path):
    """A series with a rescale slope is read straight into float32 (not a float64 volume first), every voxel the
    float64 value stored * slope + intercept rounded once to float32."""
    rng = np.random.default_rng(5)
    stored = rng.integers(-32768, 32768, (4, 9, 11)).astype(np.float32)
    template = sitk.GetImageFromArray(stored)
    template.CopyInformation(ct_image((4, 9, 11)))
    folder = write_volume(template, tmp_path / "mr", modality="MR")
    for slope, intercept in (("0.0304879909665", "1001"), ("0.1", "-1024"), ("2.5", "12.7"), ("1.2345", "-0.5")):
        for path in dicom_files(folder):
            ds = pydicom.dcmread(path)
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.save_as(path)
        image, _ = read_volume(folder)
        raw = np.stack([pydicom.dcmread(path).pixel_array for path in dicom_files(folder)]).astype(np.float64)
        assert image.GetPixelID() == sitk.sitkFloat32
        expected = (raw * float(slope) + float(intercept)).astype(np.float32)
        assert np.array_equal(sitk.GetArrayFromImage(image), expected), (slope, intercept)


def test_unsupported_dicom_modality_writes_nothing(tmp_path):
    with pytest.raises(OutputError, match="CT and MR"):
        write_volume(ct_image(), tmp_path / "unc", modality="OT")
    assert list(tmp_path.iterdir()) == []


def test_existing_dicom_output_is_replaced_but_foreign_folder_refused(tmp_path):
    out = tmp_path / "sct"
    write_volume(ct_image((6, 9, 11)), out)
    write_volume(ct_image((4, 9, 11)), out)
    assert len(dicom_files(out)) == 4 and read_volume(out)[0].GetSize()[2] == 4
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("precious")
    with pytest.raises(OutputError, match="other files"):
        write_volume(ct_image(), tmp_path / "docs")
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["thesis.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def mixed_folder(tmp_path):
    """One folder holding a 6-slice and a 9-slice series."""
    small, large = tmp_path / "small", tmp_path / "large"
    make_dicom_input(small, ct_image((6, 9, 11), seed=1), SeriesDescription="SMALL SERIES")
    make_dicom_input(large, ct_image((9, 9, 11), seed=2), SeriesDescription="LARGE SERIES")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for folder in (small, large):
        for path in dicom_files(folder):
            shutil.copy(path, mixed / f"{folder.name}_{path.name}")
    uids = {name: read_volume(tmp_path / name)[1].dicom_tags["SeriesInstanceUID"] for name in ("small", "large")}
    return mixed, uids


def test_mixed_series_picks_largest(mixed_folder):
    mixed, uids = mixed_folder
    image, info = read_volume(mixed)
    assert image.GetSize()[2] == 9 and info.dicom_tags["SeriesInstanceUID"] == uids["large"]
    (note,) = info.notes  # the user is told which series was used, and how to choose another
    assert "2 DICOM series" in note and uids["large"] in note and "LARGE SERIES" in note and "--series-uid" in note
    assert read_volume(mixed, series_uid=uids["large"])[1].notes == []


def test_two_largest_series_of_the_same_size_are_ambiguous(mixed_folder, tmp_path):
    mixed, uids = mixed_folder
    twin = tmp_path / "twin"
    make_dicom_input(twin, ct_image((9, 9, 11), seed=3), SeriesDescription="TWIN SERIES")
    for path in dicom_files(twin):
        shutil.copy(path, mixed / f"twin_{path.name}")
    with pytest.raises(InputError, match="2 of them have 9 files.*TWIN SERIES.*--series-uid"):
        read_volume(mixed)
    assert read_volume(mixed, series_uid=uids["large"])[0].GetSize()[2] == 9


def test_series_in_a_sub_folder_is_pointed_at(tmp_path):
    (tmp_path / "study").mkdir()
    make_dicom_input(tmp_path / "study" / "series1", ct_image())
    with pytest.raises(InputError, match="there are DICOM files in .*series1"):
        read_volume(tmp_path / "study")


def test_long_description_keeps_its_clinical_warning_and_uncertainty_gets_its_own_series(tmp_path):
    from MedTranslateLib.io.dicom import series_description

    label = "UNCERTAINTY (std) of SYNTHETIC CT from MR (MedTranslate mr2ct-headphantom-unet2d 2.0.0) - not for clinical use"
    short = series_description(label)
    assert short == "STD of SYNTHETIC CT - not for clinical use"  # never a model id cut in its brackets
    std = write_volume(ct_image(), tmp_path / "std/", modality="CT", description=label, uncertainty=True)
    ds = pydicom.dcmread(dicom_files(std)[0])
    assert ds.SeriesNumber == 1002 and ds.SeriesDescription == short
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) != (40.0, 400.0)  # its own values, not the CT window


def test_a_ct_uncertainty_series_keeps_fractions_of_a_hounsfield_unit(tmp_path):
    """Stored as whole HU like the CT itself, a 2.4 HU spread came back as 2 HU."""
    spread = sitk.GetImageFromArray(np.linspace(0.0, 7.3, 6 * 9 * 11, dtype=np.float32).reshape(6, 9, 11))
    spread.CopyInformation(ct_image())
    folder = write_volume(spread, tmp_path / "std/", modality="CT", uncertainty=True)
    back, _ = read_volume(folder)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(spread), atol=1e-3)


def test_long_description_keeps_the_whole_model_id():
    """The pipeline's "SYNTHETIC CT from MR (MedTranslate mr2ct-phantom-unet2d 1.0.0) - ..." was cut to
    "... (MedTranslate mr2ct- - not for clinical use": the program name, then the version, then "from MR" go first."""
    from MedTranslateLib.io.dicom import series_description

    long = "SYNTHETIC CT from MR (MedTranslate mr2ct-phantom-unet2d 1.0.0) - not for clinical use"
    assert series_description(long) == "SYNTHETIC CT (mr2ct-phantom-unet2d) - not for clinical use"
    assert series_description("SYNTHETIC T2 from T1 (MedTranslate t1-t2-brats-unet2d 1.2.0) - not for clinical use") \
        == "SYNTHETIC T2 from T1 (t1-t2-brats-unet2d) - not for clinical use"
    short = "SYNTHETIC CT (MedTranslate demo 1.0) - not for clinical use"  # fits: kept as it is
    assert series_description(short) == short


def test_series_uid_selects_series(mixed_folder):
    mixed, uids = mixed_folder
    image, info = read_volume(mixed, series_uid=uids["small"])
    assert image.GetSize()[2] == 6 and info.dicom_tags["SeriesDescription"].endswith("SMALL SERIES")
    assert len(info.referenced_instances) == 6


def test_dcm_file_means_its_series(mixed_folder):
    mixed, uids = mixed_folder
    image, info = read_volume(sorted(mixed.glob("small_*.dcm"))[2])
    assert image.GetSize()[2] == 6 and info.dicom_tags["SeriesInstanceUID"] == uids["small"]


def test_unknown_series_uid_lists_available(mixed_folder):
    mixed, uids = mixed_folder
    with pytest.raises(InputError) as info:
        read_volume(mixed, series_uid="1.2.3.4.5")
    message = info.value.message
    assert "1.2.3.4.5" in message and uids["small"] in message and uids["large"] in message
    assert "6 files" in message and "9 files" in message and "LARGE SERIES" in message


def test_left_handed_grid_keeps_physical_positions(tmp_path):
    """DICOM cannot store a left-handed slice order: the reader gets the same voxels in reversed slice order."""
    image = make_image((5, 6, 7), spacing=(1.0, 1.5, 2.0), origin=(3.0, -4.0, 5.0),
                       direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))
    back, _ = read_volume(write_volume(image, tmp_path / "lh"))
    corner = image.TransformIndexToPhysicalPoint((0, 0, 4))
    np.testing.assert_allclose(back.GetOrigin(), corner, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back)[::-1], np.rint(sitk.GetArrayFromImage(image)), atol=1e-3)


def test_missing_slice_refused(tmp_path):
    out = write_volume(ct_image((8, 9, 11)), tmp_path / "gap")
    dicom_files(out)[4].unlink()
    with pytest.raises(InputError, match="missing, duplicate or unevenly spaced"):
        read_volume(out)


def test_truncated_dicom_file_refused(tmp_path):
    out = write_volume(ct_image((8, 9, 11)), tmp_path / "cut")
    victim = dicom_files(out)[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(InputError) as info:
        read_volume(out)
    assert info.value.fix


def test_gantry_tilt_refused(tmp_path):
    out = write_volume(make_image((5, 9, 11)), tmp_path / "tilt")
    for k, path in enumerate(dicom_files(out)):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]  # each slice shifted: a tilted gantry
        ds.save_as(path)
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(out)
