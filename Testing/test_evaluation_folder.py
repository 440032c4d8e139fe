"""Folder and single-case evaluation: layouts, grid checks, CSV/JSON/HTML outputs, the CLI entry."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from MedTranslateLib.errors import ConfigError, InputError
from MedTranslateLib.evaluation import evaluate as ev
from MedTranslateLib.evaluation.cli import add_evaluate_arguments, run_evaluate

SHAPE = (12, 16, 18)


def _write(array, path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _ct_case(seed):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    body = (x**2 + y**2) < 0.7
    ct = np.where(body, 30 + rng.normal(0, 40, SHAPE), -1000.0)
    ct[body & (np.abs(x) < 0.3)] += 800
    mr = np.where(body, 300 + rng.normal(0, 20, SHAPE), 0.0)
    return ct, mr, body


@pytest.fixture
def synthrad_folder(tmp_path):
    ref_root, pred_dir = tmp_path / "Task1" / "brain", tmp_path / "pred"
    for i, case in enumerate(["1BA001", "1BA002", "1BA003"]):
        ct, mr, body = _ct_case(i)
        _write(ct, ref_root / case / "ct.nii.gz")
        _write(mr, ref_root / case / "mr.nii.gz")
        _write(body.astype(np.float32), ref_root / case / "mask.nii.gz")
        sct = ct + np.random.default_rng(10 + i).normal(10 * (i + 1), 30, SHAPE)
        _write(sct, pred_dir / (f"{case}.nii.gz" if i < 2 else f"{case}/sct.nii.gz"))
    _write(np.abs(np.random.default_rng(5).normal(0, 30, SHAPE)), pred_dir / "1BA001_std.nii.gz")
    return tmp_path, pred_dir


def test_folder_writes_csv_json_html_with_figures(synthrad_folder):
    root, pred_dir = synthrad_folder
    out = root / "out"
    rows, agg = ev.evaluate_folder(pred_dir, root, out_dir=out)
    assert [r["case"] for r in rows] == ["1BA001", "1BA002", "1BA003"]
    assert rows[1]["me"] == pytest.approx(20, abs=4)  # bias of case 2 is +20 HU
    assert agg["mae"]["mean"] == pytest.approx(np.mean([r["mae"] for r in rows]))
    assert agg["me"]["median"] == pytest.approx(rows[1]["me"])
    assert set(agg["mae"]) == {"mean", "std", "median", "q1", "q3", "n"}
    assert "unc_spearman" in rows[0] and "unc_spearman" not in rows[1]

    with open(out / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and float(table[0]["mae"]) == pytest.approx(rows[0]["mae"])
    document = json.loads((out / "metrics.json").read_text())
    assert document["aggregates"]["ssim"]["n"] == 3 and "ms_ssim" in document["definitions"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 * 2 + 1  # slices + analysis per case, 1 uncertainty
    assert "Metric definitions" in page and "SynthRAD 2023" in page and "SynthRAD 2025" in page
    assert not list(out.glob("*.tmp"))


def test_single_case_and_grid_mismatch(synthrad_folder, tmp_path):
    root, pred_dir = synthrad_folder
    case = root / "Task1" / "brain" / "1BA002"
    row = ev.evaluate_case(pred_dir / "1BA002.nii.gz", case / "ct.nii.gz", case / "mask.nii.gz")
    whole = ev.evaluate_case(pred_dir / "1BA002.nii.gz", case / "ct.nii.gz")
    assert row["mae"] != pytest.approx(whole["mae"])
    shifted = _write(np.zeros(SHAPE) + np.arange(SHAPE[2]), tmp_path / "shifted.nii.gz", origin=(5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="grid"):
        ev.evaluate_case(shifted, case / "ct.nii.gz")


def test_brats_and_paired_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        t2 = np.zeros(SHAPE)
        t2[2:-2, 3:-3, 3:-3] = 500 + rng.normal(0, 50, (8, 10, 12))
        _write(t2, tmp_path / "brats" / case / f"{case}-t2w.nii.gz")
        _write(t2 * 1.1, tmp_path / "pred" / f"{case}.nii.gz")
    rows, _ = ev.evaluate_folder(tmp_path / "pred", tmp_path / "brats", layout="auto", target="t2w")
    assert len(rows) == 2 and set(rows[0]) == {"case", "mae", "me", "psnr_norm", "ssim_norm", *ev.REGION_KEYS}
    assert rows[0]["region"] == "reference != 0" and rows[0]["voxels"] == 8 * 10 * 12
    assert rows[0]["mae"] < 1.0  # a global gain is no MR error: each image is on its own 0-1000 scale

    ct, _, body = _ct_case(3)
    _write(ct, tmp_path / "paired" / "p1.nii.gz")
    _write(body.astype(np.float32), tmp_path / "paired" / "masks" / "p1.nii.gz")
    _write(ct + 5.0, tmp_path / "pred2" / "p1.nii.gz")
    rows, agg = ev.evaluate_folder(tmp_path / "pred2", tmp_path / "paired", layout="paired")
    assert rows[0]["mae"] == pytest.approx(5.0, abs=1e-3) and agg["mae"]["std"] == 0.0
    with pytest.raises(InputError, match="No prediction"):
        ev.evaluate_folder(tmp_path / "pred2", tmp_path / "brats", layout="brats")


def test_aggregate_ignores_nan():
    agg = ev.aggregate([{"case": "a", "x": 1.0}, {"case": "b", "x": math.nan}, {"case": "c", "x": 3.0}])
    assert agg["x"]["mean"] == 2.0 and agg["x"]["n"] == 2 and "case" not in agg


def test_infinite_psnr_is_counted_and_reported(synthrad_folder, capsys):
    """A prediction identical to its reference has PSNR inf: left out of the mean, but counted and said."""
    import shutil

    root, pred_dir = synthrad_folder
    shutil.copy(root / "Task1" / "brain" / "1BA002" / "ct.nii.gz", pred_dir / "1BA002.nii.gz")
    assert run_evaluate(_args("--pred-dir", str(pred_dir), "--ref-root", str(root), "--out", str(root / "o"),
                              "--no-figures")) == 0
    printed = capsys.readouterr().out
    document = json.loads((root / "o" / "metrics.json").read_text())
    psnr = document["aggregates"]["psnr"]
    assert psnr["n"] == 2 and psnr["n_infinite"] == 1 and "n_infinite" not in document["aggregates"]["mae"]
    assert "psnr: 1 case(s) with an infinite value" in printed
    assert "psnr: 1 case(s) with an infinite value" in (root / "o" / "report.html").read_text()


def test_folder_progress_counts_cases(synthrad_folder, capsys):
    root, pred_dir = synthrad_folder
    assert run_evaluate(_args("--pred-dir", str(pred_dir), "--ref-root", str(root), "--no-figures",
                              "--progress", "jsonl")) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["message"] for e in events][:1] == ["case 1/3: 1BA001"]
    assert events[-1]["fraction"] == 1.0 and all(e["event"] == "progress" for e in events)


def test_a_report_is_replaced_whole_even_when_interrupted(tmp_path, ctrl_c_after_first_move):
    """Ctrl-C while the three files were written left a 2-case metrics.csv beside a 3-case json and html."""
    rows = [{"case": c, "mae": float(i)} for i, c in enumerate("abc")]
    with ctrl_c_after_first_move.paused():
        ev.write_outputs(rows, ev.aggregate(rows), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ev.write_outputs(rows[:2], ev.aggregate(rows[:2]), tmp_path)
    assert len(json.loads((tmp_path / "metrics.json").read_text())["cases"]) == 2
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    assert ">c<" not in (tmp_path / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json", "report.html"]


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(argv)


def test_cli_single_and_folder(synthrad_folder, capsys):
    root, pred_dir = synthrad_folder
    case = root / "Task1" / "brain" / "1BA001"
    out = root / "cli_out"
    code = run_evaluate(_args("--pred", str(pred_dir / "1BA001.nii.gz"), "--ref", str(case / "ct.nii.gz"),
                              "--mask", str(case / "mask.nii.gz"), "--input", str(case / "mr.nii.gz"),
                              "--out", str(out)))
    assert code == 0
    printed = capsys.readouterr().out
    assert "mae" in printed and "no --mask" not in printed
    assert (out / "report.html").read_text().count("data:image/png") == 2
    assert run_evaluate(_args("--pred-dir", str(pred_dir), "--ref-root", str(root), "--out", str(root / "o2"),
                              "--no-figures")) == 0
    assert len(json.loads((root / "o2" / "metrics.json").read_text())["cases"]) == 3
    with pytest.raises(ConfigError):
        run_evaluate(_args("--pred", "a.nii.gz", "--pred-dir", "x"))


def test_cli_picks_the_target_modality_from_the_reference(synthrad_folder, capsys):
    root, pred_dir = synthrad_folder
    case = root / "Task1" / "brain" / "1BA001"
    assert run_evaluate(_args("--pred", str(pred_dir / "1BA001.nii.gz"), "--ref", str(case / "ct.nii.gz"))) == 0
    out = capsys.readouterr().out
    assert "target modality: CT" in out and "dice_bone" in out
    assert "no --mask: every voxel counts" in out  # unlike a folder evaluation, which uses the masks
    # an MR reference (no Hounsfield units of air) gets the MR metrics, not HU and bone Dice
    assert run_evaluate(_args("--pred", str(case / "mr.nii.gz"), "--ref", str(case / "mr.nii.gz"))) == 0
    out = capsys.readouterr().out
    assert "target modality: MR" in out and "dice_bone" not in out
    assert run_evaluate(_args("--pred", str(case / "mr.nii.gz"), "--ref", str(case / "mr.nii.gz"),
                              "--modality", "ct")) == 0
    assert "dice_bone" in capsys.readouterr().out


def test_cli_mr_without_a_mask_leaves_out_the_references_zero_background(tmp_path, capsys):
    """As a BraTS folder evaluation and the Slicer panel do: a skull-stripped reference's zero background is not
    compared (a prediction wrong only there scores 0); a reference without zeros is compared everywhere."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(100, 900, SHAPE)
    ref[:, :, : SHAPE[2] // 2] = 0.0
    pred = ref.copy()
    pred[ref == 0] = 500.0
    ref_path, pred_path = _write(ref, tmp_path / "t2.nii.gz"), _write(pred, tmp_path / "synthetic_t2.nii.gz")
    assert run_evaluate(_args("--pred", str(pred_path), "--ref", str(ref_path), "--modality", "mr",
                              "--out", str(tmp_path / "out"), "--no-figures")) == 0
    printed = capsys.readouterr().out
    assert f"MR compared where the reference is non-zero ({int((ref != 0).sum()):,} of {ref.size:,} voxels" in printed
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["cases"][0]["mae"] == pytest.approx(0.0, abs=1e-6)
    everywhere = _write(ref + 1.0, tmp_path / "no_zeros.nii.gz")
    assert run_evaluate(_args("--pred", str(everywhere), "--ref", str(everywhere), "--modality", "mr")) == 0
    assert "no --mask: every voxel counts" in capsys.readouterr().out


def test_bad_files_are_named_by_their_role(tmp_path):
    ref = _write(np.random.default_rng(0).normal(0, 100, SHAPE), tmp_path / "ref.nii.gz")
    empty = _write(np.zeros(SHAPE), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="The mask 'empty.nii.gz' is all zero"):
        ev.load_case(ref, ref, empty)
    with pytest.raises(InputError, match="The reference 'empty.nii.gz' is all zero"):
        ev.load_case(ref, empty)


def test_cli_folder_goes_on_past_a_bad_case_and_reports_it(synthrad_folder, capsys):
    root, pred_dir = synthrad_folder
    _write(np.zeros((4, 4, 4)), pred_dir / "1BA002.nii.gz")  # off the reference grid
    out = root / "partial"
    assert run_evaluate(_args("--pred-dir", str(pred_dir), "--ref-root", str(root), "--out", str(out),
                              "--no-figures")) == 3
    assert "error: case 1BA002:" in capsys.readouterr().err
    assert [c["case"] for c in json.loads((out / "metrics.json").read_text())["cases"]] == ["1BA001", "1BA003"]


def test_mr_errors_compare_images_on_their_own_scales():
    """A synthetic MR on its model's 0-1000 scale against a reference in scanner units: the same image reads
    MAE 0 (it read the difference of the units, e.g. 207 instead of the card's 88 on a BraTS brain)."""
    from MedTranslateLib.evaluation.evaluate import CaseArrays, metrics_for_arrays

    rng = np.random.default_rng(0)
    ref = rng.uniform(100.0, 400.0, (8, 16, 16)).astype(np.float32)      # scanner units
    mask = np.ones(ref.shape, bool)
    lo, hi = np.percentile(ref, (0.5, 99.5))
    pred = np.clip((ref - lo) / (hi - lo), 0, 1) * 1000.0                  # the same image, 0-1000
    row = metrics_for_arrays(CaseArrays(pred, ref, mask, (1.0, 1.0, 1.0)), "MR")
    assert row["mae"] == pytest.approx(0.0, abs=0.5) and row["ssim_norm"] == pytest.approx(1.0, abs=1e-4)
    worse = metrics_for_arrays(CaseArrays(pred + rng.normal(0, 50, pred.shape), ref, mask, (1.0, 1.0, 1.0)), "MR")
    assert 20 < worse["mae"] < 60


def test_mr_errors_on_a_models_output_scale_with_its_card():
    """--model: the reference goes through the card's output normalisation, as the card's own metrics do."""
    from MedTranslateLib.evaluation.evaluate import CaseArrays, metrics_for_arrays, reference_statistics

    card = {"target_modality": "FLAIR", "normalization": {"output": {
        "method": "zscore", "within_mask": True, "output_range": [0.0, 1000.0], "background": 0.0}}}
    rng = np.random.default_rng(1)
    ref = rng.gamma(2.0, 100.0, (8, 16, 16)).astype(np.float32)   # skewed, as FLAIR is: percentiles != z-score
    mask = np.ones(ref.shape, bool)
    on_scale = reference_statistics(ref, mask, card)[0]
    with_card = metrics_for_arrays(CaseArrays(on_scale, ref, mask, (1.0, 1.0, 1.0)), "MR", card)
    assert with_card["mae"] == pytest.approx(0.0, abs=1e-3)
    assert metrics_for_arrays(CaseArrays(on_scale, ref, mask, (1.0, 1.0, 1.0)), "MR")["mae"] > 1.0


@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="no symbolic links")
def test_reference_case_folders_may_be_links(synthrad_folder, tmp_path):
    """A reference set made of links to case folders (a subset of a larger data set) found no cases: rglob did not
    enter linked folders."""
    root, pred_dir = synthrad_folder
    subset = tmp_path / "subset"
    subset.mkdir()
    for case in ("1BA001", "1BA002"):
        (subset / case).symlink_to(root / "Task1" / "brain" / case, target_is_directory=True)
    (subset / "1BA001" / "again").symlink_to(subset, target_is_directory=True)  # a loop back up is not followed
    rows, _ = ev.evaluate_folder(pred_dir, subset)
    assert [r["case"] for r in rows] == ["1BA001", "1BA002"]


def test_patients_with_fraction_folders_are_cases_by_path(tmp_path):
    """P01/fx1 and P02/fx1 were two cases named 'fx1' that each failed with "2 predictions match case fx1"; they
    are now named by their last folders (as many as tell each apart) and find the outputs a batch translate of their
    CBCTs wrote, or predictions in a tree of the reference's folders."""
    from MedTranslateLib.io.naming import batch_outputs

    ref_root = tmp_path / "Task2" / "pelvis"
    bias = {"P01/fx1": 10.0, "P01/fx2": 20.0, "P02/fx1": 30.0}
    sources, cts = [], {}
    for i, case in enumerate(bias):
        cts[case], cbct, body = _ct_case(i)
        _write(cts[case], ref_root / case / "ct.nii.gz")
        sources.append(_write(cbct, ref_root / case / "cbct.nii.gz"))
        _write(body.astype(np.float32), ref_root / case / "mask.nii.gz")
    for case, output in zip(bias, batch_outputs(sources, tmp_path / "batch")):  # `translate <cbcts> -o batch/`
        _write(cts[case] + bias[case], output)
        _write(cts[case] + bias[case], tmp_path / "tree" / "pelvis" / f"{case}.nii.gz")  # or the reference's tree
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == [
        "fx1_cbct_P01_synthetic.nii.gz", "fx1_cbct_P02_synthetic.nii.gz", "fx2_cbct_synthetic.nii.gz"]
    named = {"P01/fx1": 10, "fx2": 20, "P02/fx1": 30}  # as few folders as tell each case apart
    for predictions in ("batch", "tree"):
        rows, _ = ev.evaluate_folder(tmp_path / predictions, tmp_path / "Task2")
        assert {r["case"]: round(r["me"]) for r in rows} == named


def test_unique_cases_keep_their_names_and_other_patients_outputs_are_not_taken(tmp_path):
    """A name shared by two folders renamed every case (1PA001 -> siteA/1PA001), so 1PA001.nii.gz was skipped without
    a word; and evaluating one patient's folder took another patient's batch output (fx1_mr_P01 for P02's fx1)."""
    ref_root = tmp_path / "ref"
    for i, case in enumerate(("siteA/1PA001", "siteA/fx1", "siteB/fx1", "siteB/2PA001")):
        ct, mr, _ = _ct_case(i)
        _write(ct, ref_root / case / "ct.nii.gz")
        _write(mr, ref_root / case / "mr.nii.gz")
        _write(ct + 10.0 * (i + 1), tmp_path / "pred" / f"{case.split('/')[1] if 'PA' in case else case}.nii.gz")
    rows, _ = ev.evaluate_folder(tmp_path / "pred", ref_root)
    assert {r["case"]: round(r["me"]) for r in rows} == {"1PA001": 10, "siteA/fx1": 20, "siteB/fx1": 30,
                                                          "2PA001": 40}
    other = tmp_path / "other_patient"  # `translate siteA/*/mr.nii.gz siteB/fx1/mr.nii.gz -o other_patient/`
    _write(_ct_case(1)[0], other / "fx1_mr_siteA_synthetic.nii.gz")
    with pytest.raises(InputError, match="No prediction"):
        ev.evaluate_folder(other, ref_root / "siteB")
    rows, _ = ev.evaluate_folder(other, ref_root / "siteA")
    assert [r["case"] for r in rows] == ["fx1"] and rows[0]["mae"] == 0.0


def test_reports_list_cases_left_out_and_predictions_no_case_took(synthrad_folder, capsys):
    """A reference case without a prediction (a batch interrupted before it) and a failed case were left out of
    the means with nothing in metrics.json or report.html; a stray prediction file was ignored silently."""
    root, pred_dir = synthrad_folder
    (pred_dir / "1BA003" / "sct.nii.gz").unlink()  # no prediction for 1BA003
    _write(np.zeros((4, 4, 4)), pred_dir / "1BA002.nii.gz")  # off the reference grid: fails
    _write(np.zeros(SHAPE), pred_dir / "1ZZ999.nii.gz")  # matches no reference case
    out = root / "left_out"
    assert run_evaluate(_args("--pred-dir", str(pred_dir), "--ref-root", str(root), "--out", str(out),
                              "--no-figures")) == 3
    err = capsys.readouterr().err
    assert "warning: case 1BA003: no prediction" in err and "error: case 1BA002:" in err
    document = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in document["cases"]] == ["1BA001"]
    left = document["not_evaluated"]
    assert left["no_prediction"] == ["1BA003"] and list(left["failed"]) == ["1BA002"]
    assert left["unmatched_predictions"] == ["1ZZ999.nii.gz"]
    page = (out / "report.html").read_text()
    assert "without a prediction, not in the statistics: 1BA003" in page and "1BA002" in page and "1ZZ999" in page


def test_reports_say_which_voxels_were_compared(synthrad_folder, capsys):
    """Rows carry the region compared and its voxel count (the CSV and JSON said nothing of the mask, and the HTML
    claimed a body mask even for a case compared over every voxel); they are not aggregated as metrics."""
    root, pred_dir = synthrad_folder
    out = root / "regions"
    rows, agg = ev.evaluate_folder(pred_dir, root, out_dir=out, figures=False)
    body = _ct_case(0)[2]
    assert rows[0]["region"] == "mask.nii.gz > 0" and rows[0]["voxels"] == int(body.sum())
    assert "voxels" not in agg and "region" not in agg
    with open(out / "metrics.csv", newline="") as handle:
        assert int(next(csv.DictReader(handle))["voxels"]) == int(body.sum())
    case = root / "Task1" / "brain" / "1BA001"
    assert run_evaluate(_args("--pred", str(pred_dir / "1BA001.nii.gz"), "--ref", str(case / "ct.nii.gz"),
                              "--out", str(root / "whole"), "--no-figures")) == 0
    row = json.loads((root / "whole" / "metrics.json").read_text())["cases"][0]
    assert row["region"] == "every voxel" and row["voxels"] == int(np.prod(SHAPE))
