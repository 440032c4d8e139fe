"""``medtranslate translate`` end to end: the output grid equals the input grid exactly, for NIfTI,
NRRD, MHA and DICOM inputs with oblique directions, anisotropic spacing and odd sizes, and for 2D,
2.5D and 3D models."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import SimpleITK as sitk

from MedTranslateLib.cli.main import main
from MedTranslateLib.io import read_volume, write_volume
from MedTranslateLib.phantom import make_head_phantom
from packages import make_untrained_package


def oblique_direction(angle_deg: float = 17.0) -> tuple[float, ...]:
    a, b = math.radians(angle_deg), math.radians(angle_deg / 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel())


@pytest.fixture(scope="module")
def mr_input():
    """A phantom T1 MR on an oblique, anisotropic, odd-sized grid (37 x 45 x 23 voxels)."""
    t1 = make_head_phantom(shape_zyx=(28, 48, 40), spacing_mm=(4.0, 4.0, 6.0), seed=11).t1
    out = sitk.Resample(t1, [37, 45, 23], sitk.Transform(), sitk.sitkLinear, (-70.0, -88.0, -75.0),
                        (3.9, 4.1, 6.7), oblique_direction(), 0.0, sitk.sitkFloat32)
    return out


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", "dicom"])
@pytest.mark.parametrize("dimensionality", ["2d", "2.5d", "3d"])
def test_translate_keeps_the_input_grid(tmp_path, mr_input, suffix, dimensionality, capsys):
    package = make_untrained_package(tmp_path / "model", "unet", dimensionality)
    source = tmp_path / ("input" if suffix == "dicom" else f"input{suffix}")
    write_volume(mr_input, source, modality="MR")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    image, _ = read_volume(source)
    out = tmp_path / f"sct{'.nii.gz' if suffix == 'dicom' else suffix}"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--device", "cpu",
                 "--progress", "none"]) == 0
    result, _ = read_volume(out)
    assert same_grid(result, image), (result.GetOrigin(), image.GetOrigin())
    if suffix in (".nrrd", ".mha"):  # these store the geometry in double precision
        assert np.allclose(result.GetSpacing(), image.GetSpacing(), rtol=1e-12, atol=0)
        assert np.allclose(result.GetDirection(), image.GetDirection(), rtol=0, atol=1e-12)
    values = sitk.GetArrayFromImage(result)
    assert values.min() >= -1024.5 and values.max() <= 3071.5
    assert (values == -1024).any(), "outside the body holds the CT background"
    created = sorted(p.name for p in tmp_path.rglob("*"))
    assert set(created) - set(before) - set(p.name for p in out.parent.rglob(out.name + "*")) <= set()


@pytest.mark.parametrize("dimensionality", ["2d", "2.5d", "3d"])
def test_in_memory_result_has_the_identical_grid(tmp_path, mr_input, dimensionality):
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator

    package = make_untrained_package(tmp_path / "model", "unet", dimensionality)
    result = Translator(open_package(package), device="cpu").translate(mr_input)
    assert result.output.GetSize() == mr_input.GetSize()
    assert result.output.GetSpacing() == mr_input.GetSpacing()
    assert result.output.GetOrigin() == mr_input.GetOrigin()
    assert result.output.GetDirection() == mr_input.GetDirection()


def test_dicom_output_is_a_synthetic_ct_series(tmp_path, mr_input):
    import pydicom

    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    source = tmp_path / "mr_series"
    write_volume(mr_input, source, modality="MR")
    out = tmp_path / "sct_series"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--progress", "none"]) == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == mr_input.GetSize()[2]
    ds = pydicom.dcmread(files[0])
    src = pydicom.dcmread(sorted(source.glob("*.dcm"))[0])
    assert ds.Modality == "CT" and "SYNTHETIC" in ds.SeriesDescription
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert float(ds.RescaleSlope) == 1.0
    image, _ = read_volume(source)
    result, _ = read_volume(out)
    assert same_grid(result, image)


def test_jsonl_worker_protocol_and_uncertainty(tmp_path, mr_input, capsys):
    package = make_untrained_package(tmp_path / "model", "pix2pix", "2d")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    out, std = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz"
    code = main(["translate", str(source), "-m", str(package), "-o", str(out), "--uncertainty", str(std),
                 "--progress", "jsonl", "--device", "cpu"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "progress" in kinds
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
    stages = {e["stage"] for e in events if e["event"] == "progress"}
    assert {"read", "preprocess", "inference", "restore", "write"} <= stages
    done = events[-1]
    assert done["provenance"]["synthetic"] == "true" and len(done["provenance"]["model_sha256"]) == 64
    assert done["input"] == str(source) and done["output"] == str(out)
    assert all(e["input"] == str(source) for e in events if e["event"] == "warning" and "CPU" not in e["message"])
    std_image, _ = read_volume(std)
    image, _ = read_volume(source)
    assert same_grid(std_image, image)
    assert sitk.GetArrayFromImage(std_image).max() > 0


@pytest.mark.parametrize("family", ["diffusion", "contourdiff", "bridge", "cyclegan"])
def test_other_families_translate_with_uncertainty(tmp_path, mr_input, family, capsys):
    package = make_untrained_package(tmp_path / "model", family, "2d")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    out, std = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--uncertainty", str(std),
                 "--samples", "2", "--steps", "2", "--progress", "none"]) == 0
    assert same_grid(read_volume(out)[0], read_volume(source)[0])
    assert sitk.GetArrayFromImage(read_volume(std)[0]).max() > 0
    printed = capsys.readouterr()
    assert f"uncertainty {std}" in printed.out
    raised = "--samples 2 was raised to 4" in printed.err + printed.out  # said, not done silently
    assert raised == (family in ("diffusion", "contourdiff", "bridge"))


def test_a_random_forest_refuses_an_uncertainty_map_up_front():
    """It has none: before, translate warned and then reported a map it had not written."""
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.families.base import InferenceOptions
    from MedTranslateLib.pipeline import _with_uncertainty

    with pytest.raises(ConfigError, match="no uncertainty map"):
        _with_uncertainty(InferenceOptions(), "random_forest")
    assert _with_uncertainty(InferenceOptions(), "unet").tta


def test_batch_translation_into_a_folder(tmp_path, mr_input):
    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    inputs = []
    for name in ("a", "b"):
        inputs.append(tmp_path / f"{name}.nii.gz")
        write_volume(mr_input, inputs[-1], modality="MR")
    out_dir = tmp_path / "out"
    assert main(["translate", *map(str, inputs), "-m", str(package), "-o", str(out_dir), "--progress", "none"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_synthetic.nii.gz", "b_synthetic.nii.gz"]


def test_batch_progress_says_which_input_of_how_many(tmp_path, mr_input, capsys):
    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    inputs = [tmp_path / f"{name}.nii.gz" for name in ("a", "b")]
    for path in inputs:
        write_volume(mr_input, path, modality="MR")
    assert main(["translate", *map(str, inputs), "-m", str(package), "-o", str(tmp_path / "out"),
                 "--progress", "rich"]) == 0
    shown = capsys.readouterr().err
    assert "1/2 a.nii.gz" in shown and "2/2 b.nii.gz" in shown


def test_batch_reads_the_next_input_while_translating_and_matches_single_runs(tmp_path, mr_input, monkeypatch):
    import threading

    from MedTranslateLib import pipeline
    from MedTranslateLib.models.package import open_package

    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    inputs = []
    for name in ("a", "b", "c"):
        inputs.append(tmp_path / f"{name}.nii.gz")
        write_volume(mr_input, inputs[-1], modality="MR")
    translator = pipeline.Translator(open_package(package), device="cpu")
    started: dict[str, threading.Event] = {p.name: threading.Event() for p in inputs}
    read_inputs = pipeline.read_inputs

    def recording_read(path, *args):
        started[path.name].set()
        return read_inputs(path, *args)

    translate = translator.translate
    calls = []

    def translate_waiting_for_read_ahead(image, *args, **kwargs):
        following = len(calls) + 1
        calls.append(image)
        if following < len(inputs):  # the next read runs in the background during this translation
            assert started[inputs[following].name].wait(10), "the next input was not read ahead"
        else:
            assert all(e.is_set() for e in started.values())
        return translate(image, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_inputs", recording_read)
    monkeypatch.setattr(translator, "translate", translate_waiting_for_read_ahead)
    jobs = [(p, tmp_path / f"{p.name.split('.')[0]}_out.nii.gz") for p in inputs]
    outputs = [item.output for item in pipeline.translate_batch(jobs, translator, output_type="float32")]
    assert outputs == [out for _, out in jobs] and all(out.is_file() for out in outputs)
    single = pipeline.translate_file(inputs[1], package, tmp_path / "single.nii.gz", device="cpu",
                                     output_type="float32")
    batched = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[1])))
    np.testing.assert_array_equal(batched, sitk.GetArrayFromImage(single.output))


def test_a_stopped_batch_does_not_wait_for_the_read_ahead(tmp_path, mr_input, monkeypatch):
    """Ctrl-C during a translation stops the batch at once, even while the next input is still being read."""
    import threading

    from MedTranslateLib import pipeline
    from MedTranslateLib.models.package import open_package

    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    inputs = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    for path in inputs:
        write_volume(mr_input, path, modality="MR")
    translator = pipeline.Translator(open_package(package), device="cpu")
    reading, release = threading.Event(), threading.Event()
    read_inputs = pipeline.read_inputs

    def slow_second_read(path, *args):
        if path == inputs[1]:
            reading.set()
            release.wait(60)  # a large volume still being read
        return read_inputs(path, *args)

    def interrupted(*args, **kwargs):
        assert reading.wait(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "read_inputs", slow_second_read)
    monkeypatch.setattr(translator, "translate", interrupted)
    jobs = [(p, tmp_path / f"out_{p.name}") for p in inputs]
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(pipeline.translate_batch(jobs, translator, output_type="float32"))
        assert time.perf_counter() - start < 5
    finally:
        release.set()
    assert not any(out.exists() for _, out in jobs)


def test_batch_goes_on_past_a_bad_input_and_reports_it(tmp_path, mr_input, capsys):
    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    good, bad, other = tmp_path / "good.nii.gz", tmp_path / "bad.nii.gz", tmp_path / "other.nii.gz"
    write_volume(mr_input, good, modality="MR")
    write_volume(mr_input, other, modality="MR")
    bad.write_bytes(b"not a volume")
    out_dir = tmp_path / "out"
    assert main(["translate", str(good), str(bad), str(other), "-m", str(package), "-o", str(out_dir),
                 "--progress", "none"]) == 3
    assert sorted(p.name for p in out_dir.iterdir()) == ["good_synthetic.nii.gz", "other_synthetic.nii.gz"]
    err = capsys.readouterr().err
    assert f"error: {bad}: " in err and f"2 of 3 inputs translated; failed: {bad}" in err


def test_batch_names_same_named_inputs_after_their_case_folders(tmp_path, mr_input):
    """SynthRAD's <case>/mr.nii.gz: one output per case, which ``evaluate --pred-dir`` finds by case."""
    from MedTranslateLib.io.naming import batch_outputs
    from MedTranslateLib.evaluation.evaluate import _prediction_for

    inputs = [str(tmp_path / case / "mr.nii.gz") for case in ("1PA001", "1PA003")] + [str(tmp_path / "t1.nrrd")]
    outputs = batch_outputs(inputs, tmp_path / "out")
    assert [p.name for p in outputs] == ["1PA001_mr_synthetic.nii.gz", "1PA003_mr_synthetic.nii.gz",
                                         "t1_synthetic.nii.gz"]
    (tmp_path / "out").mkdir()
    outputs[0].write_bytes(b"")
    assert _prediction_for(tmp_path / "out", "1PA001")[0] == outputs[0]
    assert _prediction_for(tmp_path / "out", "1PA00")[0] is None


def test_evaluate_reports_a_case_with_two_matching_predictions(tmp_path):
    """Two sites' outputs of one case in one folder: reported, not silently left out."""
    from MedTranslateLib.errors import InputError
    from MedTranslateLib.evaluation.evaluate import _prediction_for

    for name in ("1PA003_mr_siteA_synthetic.nii.gz", "1PA003_mr_siteB_synthetic.nii.gz", "1PA001_mr_synthetic.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert _prediction_for(tmp_path, "1PA001")[0] == tmp_path / "1PA001_mr_synthetic.nii.gz"
    with pytest.raises(InputError, match="2 predictions match case 1PA003"):
        _prediction_for(tmp_path, "1PA003")


def test_batch_names_the_same_case_from_two_sites_apart(tmp_path):
    """Same case name under two sites, or one name in two formats: distinct outputs, still found by case."""
    from MedTranslateLib.io.naming import batch_outputs

    inputs = [str(tmp_path / site / "1PA003" / "mr.nii.gz") for site in ("siteA", "siteB")]
    names = [p.name for p in batch_outputs(inputs + [str(tmp_path / "siteB" / "1PA001" / "mr.nii.gz")], tmp_path)]
    assert names == ["1PA003_mr_siteA_synthetic.nii.gz", "1PA003_mr_siteB_synthetic.nii.gz",
                     "1PA001_mr_synthetic.nii.gz"]
    formats = [p.name for p in batch_outputs([str(tmp_path / "in_mr.mha"), str(tmp_path / "in_mr.nhdr")], tmp_path)]
    assert formats == [f"{tmp_path.name}_in_mr_mha_synthetic.nii.gz", f"{tmp_path.name}_in_mr_nhdr_synthetic.nii.gz"]
    mixed = [str(tmp_path / "x" / "a" / "mr.nii.gz"), str(tmp_path / "y" / "a" / "mr.nii.gz"),
             str(tmp_path / "x" / "b" / "a_mr.nii.gz")]
    assert [p.name for p in batch_outputs(mixed, tmp_path)] == [
        "a_mr_x_nii_gz_synthetic.nii.gz", "a_mr_y_synthetic.nii.gz", "a_mr_x_nii_gz_2_synthetic.nii.gz"]


def test_outputs_that_differ_only_in_letter_case_are_kept_apart(tmp_path):
    """macOS and Windows ignore letter case in file names: T1 and t1 would be one output there."""
    from MedTranslateLib.io.naming import batch_outputs
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.pipeline import check_outputs

    inputs = [str(tmp_path / "A" / "T1.nii.gz"), str(tmp_path / "B" / "t1.nii.gz")]
    assert [p.name for p in batch_outputs(inputs, tmp_path)] == ["A_T1_synthetic.nii.gz", "B_t1_synthetic.nii.gz"]
    with pytest.raises(OutputError, match="differs only in letter case"):
        check_outputs([tmp_path / "in.nii.gz"], [tmp_path / "sct.nii.gz", tmp_path / "SCT.nii.gz"])


def test_batch_refuses_outputs_that_clash_before_loading_the_model(tmp_path, mr_input):
    good = tmp_path / "in" / "a.nii.gz"
    good.parent.mkdir()
    write_volume(mr_input, good, modality="MR")
    out_dir = tmp_path / "out"
    # the same input twice, and an output that would overwrite a later input of the batch
    assert main(["translate", str(good), str(good), "-m", "no-such-model", "-o", str(out_dir)]) == 5
    later = tmp_path / "in" / "a_synthetic.nii.gz"
    write_volume(mr_input, later, modality="MR")
    before = later.read_bytes()
    assert main(["translate", str(good), str(later), "-m", "no-such-model", "-o", str(good.parent)]) == 5
    assert later.read_bytes() == before and not out_dir.exists()


def test_batch_refuses_a_file_name_as_its_output_folder(tmp_path, mr_input, capsys):
    """Several inputs with -o out.nii.gz silently made a folder named out.nii.gz."""
    inputs = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    for path in inputs:
        write_volume(mr_input, path, modality="MR")
    code = main(["translate", *map(str, inputs), "-m", "no-such-model", "-o", str(tmp_path / "out.nii.gz")])
    assert code == 6 and "is a file name" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


def test_ensemble_mean_and_spread(tmp_path, mr_input):
    a = make_untrained_package(tmp_path / "a", "unet", "2d", seed=1, id="ens-a")
    b = make_untrained_package(tmp_path / "b", "unet", "2d", seed=2, id="ens-b")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    outs = {}
    for name, models in (("a", [str(a)]), ("b", [str(b)]), ("ab", [str(a), "--ensemble", str(b)])):
        outs[name] = tmp_path / f"{name}.nii.gz"
        extra = ["--uncertainty", str(tmp_path / "std.nii.gz")] if name == "ab" else []
        assert main(["translate", str(source), "-m", *models, "-o", str(outs[name]), "--progress", "none", *extra]) == 0
    arrays = {k: sitk.GetArrayFromImage(read_volume(v)[0]) for k, v in outs.items()}
    assert np.allclose(arrays["ab"], (arrays["a"] + arrays["b"]) / 2, atol=0.5)
    std = sitk.GetArrayFromImage(read_volume(tmp_path / "std.nii.gz")[0])
    assert np.allclose(std, np.abs(arrays["a"] - arrays["b"]) / 2, atol=0.5)
    # the header names every member, not only the first (NIfTI's 80-character note and a full MHA header)
    sums = [json.loads((p / "model.json").read_text())["weights"]["sha256"] for p in (a, b)]
    assert sitk.ReadImage(str(outs["ab"])).GetMetaData("descrip").startswith(
        f"SYNTHETIC MedTranslate ens-a+ens-b 0.1.0+0.1.0 sha256:{sums[0][:12]},{sums[1][:12]}")
    assert main(["translate", str(source), "-m", str(a), "--ensemble", str(b), "-o", str(tmp_path / "ab.mha"),
                 "--progress", "none"]) == 0
    header = sitk.ReadImage(str(tmp_path / "ab.mha"))
    assert header.GetMetaData("MedTranslate_model_id") == "ens-a+ens-b"
    assert header.GetMetaData("MedTranslate_model_sha256") == ",".join(sums)
    assert header.GetMetaData("MedTranslate_ensemble") == "ens-a@0.1.0,ens-b@0.1.0"
    assert "(MedTranslate ens-a+ens-b 0.1.0+0.1.0)" in header.GetMetaData("ITK_FileNotes")  # the description too


def test_ensemble_result_is_the_mean_and_std_of_its_members(tmp_path, mr_input):
    """Members are folded in one at a time, not stacked: the mean stays bit for bit that of the stack of member
    outputs (also without an uncertainty map), the std within float32 round-off."""
    from MedTranslateLib.ensemble import EnsembleTranslator
    from MedTranslateLib.families.base import InferenceOptions, derive_seed
    from MedTranslateLib.models.package import open_package

    packages = [open_package(make_untrained_package(tmp_path / name, "unet", "2d", seed=seed, id=f"ens-{name}"))
                for name, seed in (("a", 1), ("b", 2), ("c", 3))]
    ensemble = EnsembleTranslator(packages, device="cpu")
    options = InferenceOptions(seed=5)
    outputs = [m.translate(mr_input, options=InferenceOptions(seed=derive_seed(5, i))).output
               for i, m in enumerate(ensemble.members)]
    members = np.stack([sitk.GetArrayFromImage(output) for output in outputs])
    result = ensemble.translate(mr_input, options=options, uncertainty=True)
    mean, std = sitk.GetArrayFromImage(result.output), sitk.GetArrayFromImage(result.uncertainty)
    assert mean.dtype == std.dtype == np.float32 and np.ptp(members, axis=0).max() > 1
    assert np.array_equal(mean, members.mean(axis=0))
    assert np.allclose(std, members.std(axis=0), rtol=1e-5, atol=np.spacing(np.float32(np.abs(members).max())))
    plain = ensemble.translate(mr_input, options=options)
    assert plain.uncertainty is None and np.array_equal(sitk.GetArrayFromImage(plain.output), mean)
    assert len(result.stats["members"]) == 3 and result.provenance["model_id"] == "ens-a+ens-b+ens-c"


def test_ensemble_progress_runs_through_every_member(tmp_path, mr_input, capsys):
    """One tracker shared by the members stopped at the first member's end (progress never goes back), so the bar
    sat at 88 % for the other members; their messages did not say which model was running."""
    a = make_untrained_package(tmp_path / "a", "unet", "2d", seed=1, id="ens-a")
    b = make_untrained_package(tmp_path / "b", "unet", "2d", seed=2, id="ens-b")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    assert main(["translate", str(source), "-m", str(a), "--ensemble", str(b), "-o", str(tmp_path / "o.nii.gz"),
                 "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions)
    first = [e["fraction"] for e in progress if e["message"].startswith("model 1/2 (ens-a)")]
    second = [e["fraction"] for e in progress if e["message"].startswith("model 2/2 (ens-b)")]
    assert first and second and max(first) < 0.55 < max(second)
    assert len(events[-1]["stats"]["members"]) == 2


def test_an_ensemble_of_mr_models_writing_different_scales_is_refused(tmp_path, mr_input, capsys):
    """A T2 model writing 0-1000 and one writing 0-1 were averaged into neither scale, without a word."""
    a = make_untrained_package(tmp_path / "a", "unet", "2d", target="T2", id="t2-a")
    b = make_untrained_package(tmp_path / "b", "unet", "2d", target="T2", id="t2-b")
    card = json.loads((b / "model.json").read_text(encoding="utf-8"))
    card["normalization"]["output"]["output_range"] = [0.0, 1.0]
    (b / "model.json").write_text(json.dumps(card), encoding="utf-8")
    source = tmp_path / "t1.nii.gz"
    write_volume(mr_input, source, modality="MR")
    out = tmp_path / "o.nii.gz"
    assert main(["translate", str(source), "-m", str(a), "--ensemble", str(b), "-o", str(out), "--progress",
                 "none"]) == 4
    assert "different intensity scales" in capsys.readouterr().err and not out.exists()
    c = make_untrained_package(tmp_path / "c", "unet", "2d", target="T2", seed=3, id="t2-c")
    assert main(["translate", str(source), "-m", str(a), "--ensemble", str(c), "-o", str(out), "--progress",
                 "none"]) == 0


@pytest.mark.parametrize("output_type, pixel, exact", [("auto", sitk.sitkInt16, False), ("int16", sitk.sitkInt16, False),
                                                       ("float32", sitk.sitkFloat32, True)])
def test_output_type_of_a_synthetic_ct(tmp_path, mr_input, output_type, pixel, exact):
    """CT is written as int16 Hounsfield units by default (rounded), float32 when asked; same grid either way."""
    from MedTranslateLib.pipeline import Translator
    from MedTranslateLib.models.package import open_package

    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    source = tmp_path / "input.nii.gz"
    write_volume(mr_input, source, modality="MR")
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(out), "--device", "cpu",
                 "--progress", "none", "--output-type", output_type]) == 0
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == pixel and same_grid(written, read_volume(source)[0])
    image, _ = read_volume(source)
    expected = sitk.GetArrayFromImage(Translator(open_package(package), device="cpu").translate(image).output)
    values = sitk.GetArrayFromImage(written).astype(np.float64)
    if exact:
        assert np.allclose(values, expected, atol=1e-3)
    else:
        assert np.abs(values - expected).max() <= 0.5 + 1e-3


def test_an_mr_target_stays_float32_with_auto(tmp_path):
    from MedTranslateLib.pipeline import as_output_type

    image = sitk.GetImageFromArray(np.linspace(0, 1000, 60, dtype=np.float32).reshape(3, 4, 5) + 0.25)
    halves = sitk.GetImageFromArray(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 32767.4], np.float32).reshape(1, 1, 7))
    assert sitk.GetArrayFromImage(as_output_type(halves, "int16", "CT")).ravel().tolist() == [
        -2, -2, 0, 0, 2, 2, 32767]  # halves to even, as np.rint
    assert as_output_type(image, "auto", "MR") is image
    as_int = as_output_type(image, "auto", "CT")
    assert as_int.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(as_int), np.rint(sitk.GetArrayFromImage(image)).astype(np.int16))


def test_unknown_output_type_is_refused_before_anything_is_written(tmp_path, mr_input):
    from MedTranslateLib.errors import ConfigError
    from MedTranslateLib.pipeline import translate_file

    source = tmp_path / "input.nii.gz"
    write_volume(mr_input, source, modality="MR")
    with pytest.raises(ConfigError, match="output type"):
        translate_file(source, "mr2ct-headphantom-unet2d", tmp_path / "out.nii.gz", output_type="uint8")
    assert not (tmp_path / "out.nii.gz").exists()


def test_sampler_option_chooses_the_diffusion_sampler(tmp_path, mr_input, capsys):
    from MedTranslateLib.errors import ConfigError

    package = make_untrained_package(tmp_path / "model", "diffusion", "2d",
                                     architecture={"prediction_type": "v_prediction"})
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    outputs = {}
    for sampler in ("ddim", "dpm++2m"):
        outputs[sampler] = tmp_path / f"{sampler}.nii.gz"
        assert main(["translate", str(source), "-m", str(package), "-o", str(outputs[sampler]), "--steps", "3",
                     "--sampler", sampler, "--progress", "none"]) == 0
    ddim, dpm = (sitk.GetArrayFromImage(read_volume(outputs[s])[0]) for s in ("ddim", "dpm++2m"))
    assert not np.array_equal(ddim, dpm)  # the option reached the sampling loop
    bad = tmp_path / "bad.nii.gz"
    assert main(["translate", str(source), "-m", str(package), "-o", str(bad), "--sampler", "euler",
                 "--progress", "none"]) == ConfigError.exit_code
    assert "Unknown diffusion sampler 'euler'" in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("order", [(1, 2, 0), (2, 0, 1)])
def test_a_2d_model_slices_axially_whatever_the_storage_order(tmp_path, order):
    """The same head stored sagittally or coronally (axes permuted, direction to match) gets the same synthetic
    volume: the 2D model always sees axial slices, and the result lands back on the stored grid."""
    from MedTranslateLib.models.package import open_package
    from MedTranslateLib.pipeline import Translator

    axial = make_head_phantom(shape_zyx=(24, 40, 32), spacing_mm=(4.0, 4.0, 6.0), seed=5).t1
    stored = sitk.PermuteAxes(axial, order)
    assert stored.GetSize() != axial.GetSize()
    translator = Translator(open_package(make_untrained_package(tmp_path / "model", "unet", "2d")), device="cpu")
    expected = translator.translate(axial).output
    result = translator.translate(stored).output
    assert same_grid(result, stored)
    back = sitk.PermuteAxes(result, [order.index(axis) for axis in range(3)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected), atol=1e-3)


def test_a_single_bad_input_is_refused_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    assert main(["translate", str(bad), "-m", "no-such-model", "-o", str(tmp_path / "o.nii.gz")]) == 3
    err = capsys.readouterr().err
    assert "Cannot read" in err and "Unknown model" not in err and "Running on the CPU" not in err


def test_float32_with_a_dicom_ct_output_says_it_has_no_effect(tmp_path, mr_input, capsys):
    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    assert main(["translate", str(source), "-m", str(package), "-o", str(tmp_path / "dicom_sct"),
                 "--output-type", "float32", "--progress", "none"]) == 0
    assert "whole Hounsfield units" in capsys.readouterr().err


def test_sampling_options_on_a_model_that_does_not_sample_are_reported(tmp_path, mr_input, capsys):
    """--steps, --sampler and --samples given to a U-Net were accepted without a word (and without an effect)."""
    package = make_untrained_package(tmp_path / "model", "unet", "2d")
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    base = ["translate", str(source), "-m", str(package), "--progress", "none"]
    assert main([*base, "-o", str(tmp_path / "a.nii.gz"), "--steps", "7", "--samples", "3"]) == 0
    assert "so they were ignored" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b.nii.gz")]) == 0
    assert "ignored" not in capsys.readouterr().err
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / "a.nii.gz")[0]),
                                  sitk.GetArrayFromImage(read_volume(tmp_path / "b.nii.gz")[0]))


def test_values_beyond_int16_are_never_cut_off():
    """auto keeps float32 for them; an explicit int16 is refused before anything is written."""
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.pipeline import as_output_type

    image = sitk.GetImageFromArray(np.linspace(-1024, 40000, 60, dtype=np.float32).reshape(3, 4, 5))
    assert as_output_type(image, "auto", "CT") is image
    with pytest.raises(OutputError, match="int16 range"):
        as_output_type(image, "int16", "CT")


def test_an_id_whose_newest_package_cannot_be_read_runs_the_older_one_with_a_warning(tmp_path, mr_input, capsys,
                                                                                   isolated_user_models):
    """'-m ID' silently ran 0.1.0 when ID 0.2.0 had stopped passing; '-m ID@0.2.0' said "Unknown version"."""
    from MedTranslateLib.models.registry import ModelRegistry

    ModelRegistry().import_package(make_untrained_package(tmp_path / "v1", "unet", "2d", id="mine", version="0.1.0"))
    broken = make_untrained_package(isolated_user_models / "mine@0.2.0", "unet", "2d", id="mine", version="0.2.0")
    (broken / "model.json").write_text(json.dumps({**json.loads((broken / "model.json").read_text()), "oops": 1}))
    source = tmp_path / "mr.nii.gz"
    write_volume(mr_input, source, modality="MR")
    base = ["translate", str(source), "--device", "cpu", "--progress", "jsonl"]
    assert main([*base, "-m", "mine", "-o", str(tmp_path / "a.nii.gz")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("'mine' uses mine@0.1.0 (user), not mine@0.2.0" in w for w in warnings), warnings
    assert main([*base, "-m", "mine@0.2.0", "-o", str(tmp_path / "b.nii.gz")]) == 4
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "cannot be read" in error["message"] and "'oops' was unexpected" in error["message"]
