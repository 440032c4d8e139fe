"""``medtranslate bench``: Markdown splicing between the speed markers, per-run peak memory through
``os.wait4``, size parsing, FLOP rates, and a tiny end-to-end benchmark run."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

from MedTranslateLib import bench
from MedTranslateLib.errors import ConfigError
from packages import make_untrained_package


def test_splice_creates_file_with_intro_and_both_marker_pairs(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    bench.splice_markdown(path, "## Speed\n\n| a |\n")
    text = path.read_text()
    assert text.startswith("# MedTranslate benchmarks")
    for marker in (bench.SPEED_START, bench.SPEED_END, bench.MODELS_START, bench.MODELS_END):
        assert text.count(marker) == 1
    assert text.index(bench.SPEED_START) < text.index("## Speed") < text.index(bench.SPEED_END)


def test_splice_replaces_only_the_speed_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    before = ("# Title\n\nintro kept\n\n<!-- models:start -->\n| model | MAE |\n| m | 12 |\n<!-- models:end -->\n\n"
              f"{bench.SPEED_START}\nold speed table\n{bench.SPEED_END}\n\ntrailing notes kept\n")
    path.write_text(before)
    bench.splice_markdown(path, "new speed table")
    text = path.read_text()
    assert "old speed table" not in text and "new speed table" in text
    assert text.startswith("# Title\n\nintro kept\n\n<!-- models:start -->\n| model | MAE |\n| m | 12 |\n<!-- models:end -->")
    assert text.endswith("\n\ntrailing notes kept\n")
    again = bench.splice_markdown(path, "new speed table")  # idempotent
    assert again == text


def test_splice_appends_markers_when_missing(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Someone's file\n\n<!-- models:start -->\nx\n<!-- models:end -->\n")
    text = bench.splice_markdown(path, "speed")
    assert text.startswith("# Someone's file\n\n<!-- models:start -->\nx\n<!-- models:end -->\n")
    assert text.rstrip().endswith(f"{bench.SPEED_START}\nspeed\n{bench.SPEED_END}")


def test_peak_rss_is_each_runs_own():
    """A big child followed by a small one: the small one must not report the big one's peak
    (getrusage(RUSAGE_CHILDREN) would)."""
    big = bench.run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    small = bench.run_measured([sys.executable, "-c", "print('hi')"])
    assert big["returncode"] == 0 and small["returncode"] == 0
    assert big["peak_rss_mib"] > 290
    assert small["peak_rss_mib"] < big["peak_rss_mib"] - 200
    assert small["stdout"].strip() == "hi"
    assert small["wall_seconds"] > 0 and small["cpu_seconds"] >= 0


def test_run_measured_reports_failure_exit_code():
    result = bench.run_measured([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert result["returncode"] == 3 and "boom" in result["stderr"]


def test_parse_sizes():
    assert bench.parse_sizes("24x24x16, 256X256X160") == [(24, 24, 16), (256, 256, 160)]
    for bad in ("24x24", "axbxc", "0x2x2"):
        with pytest.raises(ConfigError):
            bench.parse_sizes(bad)


def test_flop_rates_and_medians():
    runs = [{"wall_seconds": w, "cpu_seconds": 1.0, "peak_rss_mib": r, "seconds": {"inference": 2.0, "read": 0.1},
             "stats": {"units": 10, "unit_shape": [64, 32], "passes": 1}} for w, r in ((3.0, 100), (1.0, 300), (2.0, 200))]
    run = bench.summarise_runs(runs)
    assert run["wall_seconds"] == 2.0 and run["peak_rss_mib"] == 200 and (run["wall_min"], run["wall_max"]) == (1.0, 3.0)
    bench.add_flop_rates(run, {"flops_per_pixel": 1000.0})
    assert run["slices_per_second"] == pytest.approx(5.0)
    assert run["achieved_gflops"] == pytest.approx(1000.0 * 64 * 32 * 10 / 2.0 / 1e9)


def test_markdown_table_has_a_row_per_size():
    results = {"machine": {"cpu": "cpu", "cores": 2, "torch": "x", "threads": 2}, "matmul_peak_gflops": 100.0,
               "help_seconds": 0.2,
               "models": [{"model": "m", "network": {"family": "unet", "dimensionality": "2d", "parameters": 10,
                                                     "flops_per_unit": 2e9, "unit": "256x256", "forward_gflops": 60.0,
                                                     "batch": 8},
                           "runs": [{"size": [24, 24, 16], "repeats": 1, "wall_seconds": 5.0, "cpu_seconds": 6.0,
                                     "peak_rss_mib": 500.0, "seconds": {"inference": 1.0},
                                     "stats": {"model_shape": [16, 32, 32]}, "slices_per_second": 16.0,
                                     "achieved_gflops": 50.0}]}]}
    text = bench.to_markdown(results)
    assert "| 24 x 24 x 16 | 16x32x32 | 5.0 | 6.0 |" in text
    assert "50.0 (50%)" in text and "60%" in text and "0.20 s" in text


@pytest.mark.slow
def test_tiny_bench_run_writes_benchmarks_md(tmp_path, monkeypatch, capsys):
    package = make_untrained_package(tmp_path / "pkg", "unet", "2d")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# B\n\n<!-- models:start -->\nmodels table\n<!-- models:end -->\n")
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args(["--model", str(package), "--sizes", "24x24x16", "--device", "cpu",
                              "--json", str(tmp_path / "bench.json")])
    assert bench.run_bench(args) == 0
    progress = capsys.readouterr().err  # one line per measurement, to 100 %
    assert "translating 24x24x16 with" in progress and "bench 100% done" in progress
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "models table" in text and bench.SPEED_START in text and "| 24 x 24 x 16 |" in text
    assert "channels-last (pipeline)" in text  # the side-by-side network rewrites table
    results = json.loads((tmp_path / "bench.json").read_text())
    run = results["models"][0]["runs"][0]
    assert run["peak_rss_mib"] > 50 and run["wall_seconds"] > 0
    assert {"read", "preprocess", "inference", "restore", "write"} <= set(run["seconds"])
    assert run["stats"]["units"] >= 1 and run["achieved_gflops"] > 0
    assert results["matmul_peak_gflops"] > 0 and results["models"][0]["network"]["forward_gflops"] > 0
    assert os.environ.get("OMP_WAIT_POLICY")  # set before torch is used in the bench process


def test_model_can_carry_its_own_sizes():
    default = [(8, 8, 8)]
    assert bench.split_model_sizes("a/b", default) == ("a/b", default)
    assert bench.split_model_sizes("a/b=24x24x16,32x32x8", default) == ("a/b", [(24, 24, 16), (32, 32, 8)])


@pytest.mark.slow
def test_sampling_sweep_times_each_step_count(tmp_path):
    from MedTranslateLib.bench import make_bench_volume, sampling_sweep
    from packages import make_untrained_package

    # v prediction: an untrained network's small outputs are a clean estimate of about 0, not a saturated one
    package = make_untrained_package(tmp_path / "diffusion", "diffusion", "2d",
                                     architecture={"prediction_type": "v_prediction"})
    volume = tmp_path / "in.nii.gz"
    make_bench_volume((24, 24, 6), volume)
    rows = sampling_sweep(volume, str(package), [1, 3], "cpu", tmp_path)
    assert [r["steps"] for r in rows] == [1, 3]
    assert all(r["inference_seconds"] > 0 for r in rows)
    assert rows[-1]["mean_abs_difference_to_max_steps"] == 0.0
    assert rows[0]["mean_abs_difference_to_max_steps"] > 0.0


def test_networks_side_by_side():
    from MedTranslateLib.bench_network import layout_comparison, to_markdown

    peaks = iter([100.0, 110.0, 120.0, 130.0])
    rows = layout_comparison("cpu", features=(4, 8, 16), size=32, batch=2, repeats=1, peak=lambda: next(peaks))
    assert [r["variant"].split(" [")[0] for r in rows] == ["MONAI BasicUNet"] * 2 + ["MedTranslate U-Net"] * 2
    assert [r["peak_gflops"] for r in rows] == [100.0, 110.0, 120.0, 130.0]
    assert all(r["seconds"] > 0 and r["gflops"] > 0 and r["gflop_per_slice"] > 0 for r in rows)
    assert rows[2]["gflop_per_slice"] == rows[3]["gflop_per_slice"]  # folding keeps the arithmetic
    text = "\n".join(to_markdown(rows, peak_gflops=1e6, size=32, batch=2))
    assert "instance norm (first default) |" in text and "1.00x |" in text and "(pipeline) |" in text
    assert f"| {rows[0]['gflops']:.1f} | {rows[0]['gflops'] / 1e6:.0%} |" in text


def test_sampling_sweep_table_from_results(tmp_path):
    from MedTranslateLib import bench_sampling

    rows = [{"label": "", "sampler": s, "steps": n, "cpu_seconds": 10.0 * n,
             "metrics": {"mae": 100.0 / n, "psnr": 25.0, "ssim": 0.8, "mae_bone": 300.0, "dice_bone": 0.5}}
            for s in ("dpm++2m", "ddim") for n in (5, 10)]
    results = tmp_path / "rows.json"
    results.write_text(json.dumps(rows))
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# B\n\n<!-- speed:start -->\nspeed\n<!-- speed:end -->\n")
    assert bench_sampling.main(["--results", str(results), "--write", str(markdown)]) == 0
    text = markdown.read_text()
    assert "speed" in text and bench_sampling.START in text
    assert "| DPM++ 2M | 10 | 10.0 | 25.00 | 0.800 | 300.0 | 0.500 | 100.0 |" in text
    assert "| DDIM | 5 | 20.0 |" in text
    with pytest.raises(SystemExit):
        bench_sampling.main([])


def test_cpu_matmul_peak_is_the_better_of_blas_and_onednn(monkeypatch):
    """MKL's sgemm is slow on AMD processors: the oneDNN 1 x 1 convolution GEMM counts when it is faster."""
    from MedTranslateLib import bench_network

    timings = iter([1.0, 0.5])  # torch.mm, then the 1 x 1 convolution
    monkeypatch.setattr(bench_network, "best_seconds", lambda fn, repeats, device: next(timings))
    assert bench_network.matmul_peak_gflops("cpu", n=64) == pytest.approx(2 * 1024**2 * 64**2 / 0.5 / 1e9)
    timings = iter([1e-6, 1.0])
    assert bench_network.matmul_peak_gflops("cpu", n=64) == pytest.approx(2 * 64**3 / 1e-6 / 1e9)


def test_first_call_check_runs_each_search_setting_in_a_fresh_process(tmp_path):
    """Testing/gpu/first_call.py (the GPU check's first-call rows) as a CPU dry run: one row per setting and round,
    each with the first and the second translation's stage seconds."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent / "gpu" / "first_call.py"
    out = tmp_path / "first_call.json"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "v.nii.gz"), "--size", "40x40x24",
                           "--model", "mr2ct-headphantom-unet2d=search", "--device", "cpu", "--rounds", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(row["search"], row["search_in_effect"]) for row in rows] == [("on", True), ("off", False)]
    for row in rows:
        assert {"preprocess", "inference", "restore", "total"} <= set(row["first"]) <= set(row["second"])
        assert row["load"] > 0 and row["stats"]["device"] == "cpu"
