"""Self-contained HTML evaluation report: figures embedded as base64 PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from MedTranslateLib.evaluation.metrics import AIR_MAX_HU, BONE_MIN_HU, DEFINITIONS

MAX_SCATTER_POINTS = 20_000
VIEWS = ("axial", "coronal", "sagittal")


def new_figure(rows: int, cols: int, size: tuple[float, float], **gridspec: Any) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display needed); ``gridspec`` e.g. height_ratios."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=True, gridspec_kw=gridspec or None)
    return fig, axes


def figure_png(fig: Any) -> bytes:
    """Render a figure to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _centre_slices(array: np.ndarray, spacing_xyz: Sequence[float]) -> list[tuple[np.ndarray, float]]:
    """Axial, coronal, sagittal slices through the centre, each with its display aspect (row/col mm)."""
    z, y, x = (s // 2 for s in array.shape)
    sx, sy, sz = spacing_xyz
    return [(array[z], sy / sx), (array[:, y, :][::-1], sz / sx), (array[:, :, x][::-1], sz / sy)]


def _display_window(modality: str, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    if modality == "CT":
        return -1000.0, 1500.0
    lo, hi = np.percentile(ref[mask], (0.5, 99.5)) if mask.any() else (ref.min(), ref.max())
    return float(lo), float(hi)


def slices_figure(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, spacing_xyz: Sequence[float],
                  input_array: np.ndarray | None = None, modality: str = "CT") -> bytes:
    """Rows axial/coronal/sagittal; columns input (if given), synthetic, reference, difference."""
    columns = ([("input", input_array)] if input_array is not None else []) + [
        ("synthetic", pred), ("reference", ref), ("synthetic - reference", pred - ref)]
    ratios = [image.shape[0] * aspect / image.shape[1] for image, aspect in _centre_slices(ref, spacing_xyz)]
    col_width = 3.0
    fig, axes = new_figure(3, len(columns), size=(col_width * len(columns), col_width * sum(ratios) + 1.6),
                           height_ratios=ratios)
    lo, hi = _display_window(modality, ref, mask)
    diff_lim = float(np.percentile(np.abs(pred - ref)[mask], 99)) if mask.any() else 1.0
    diff_lim = diff_lim if diff_lim > 0 else 1.0
    for col, (title, array) in enumerate(columns):
        for row, (image, aspect) in enumerate(_centre_slices(array, spacing_xyz)):
            ax = axes[row, col]
            if title.startswith("synthetic -"):
                im = ax.imshow(image, cmap="RdBu_r", vmin=-diff_lim, vmax=diff_lim, aspect=aspect)
            elif title == "input":
                ilo, ihi = np.percentile(array, (0.5, 99.5))
                im = ax.imshow(image, cmap="gray", vmin=ilo, vmax=ihi, aspect=aspect)
            else:
                im = ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=11)
            if col == 0:
                ax.set_ylabel(VIEWS[row], fontsize=11)
        unit = "input units" if title == "input" else ("HU" if modality == "CT" else "a.u.")
        fig.colorbar(im, ax=axes[:, col], location="bottom", shrink=0.8, aspect=25, label=unit)
    return figure_png(fig)


def analysis_figure(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, metrics: dict[str, float],
                    modality: str = "CT") -> bytes:
    """Error histogram, 2D histogram synthetic vs reference, Bland-Altman, per-tissue MAE bars."""
    from matplotlib.colors import LogNorm

    units = "HU" if modality == "CT" else "a.u."
    p, r = pred[mask].astype(np.float64), ref[mask].astype(np.float64)
    err = p - r
    fig, axes = new_figure(2, 2, size=(10.0, 8.0))
    ax = axes[0, 0]
    lim = max(float(np.percentile(np.abs(err), 99.5)) * 1.05, 1e-3)
    ax.hist(np.clip(err, -lim, lim), bins=100, range=(-lim, lim), color="tab:blue")
    ax.axvline(0, color="black", lw=1)
    ax.set_title(f"Error histogram (mean {err.mean():.1f}, MAE {np.abs(err).mean():.1f} {units})", fontsize=10)
    ax.set_xlabel(f"synthetic - reference ({units}); end bins hold the clipped 0.5 % tails", fontsize=9)
    ax.set_ylabel("voxels")

    ax = axes[0, 1]
    lo, hi = (-1024.0, 2000.0) if modality == "CT" else tuple(np.percentile(np.concatenate([p, r]), (0.5, 99.5)))
    hi = hi if hi > lo else lo + 1.0
    ax.hist2d(r, p, bins=120, range=[[lo, hi], [lo, hi]], norm=LogNorm(), cmap="viridis")
    ax.plot([lo, hi], [lo, hi], color="red", lw=1, label="identity")
    ax.set_xlabel(f"reference ({units})")
    ax.set_ylabel(f"synthetic ({units})")
    ax.set_title("Synthetic vs reference (voxel counts, log)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1, 0]
    idx = np.arange(p.size)
    if p.size > MAX_SCATTER_POINTS:
        idx = np.random.default_rng(0).choice(p.size, MAX_SCATTER_POINTS, replace=False)
    mean_pr = (p[idx] + r[idx]) / 2.0
    ax.scatter(mean_pr, err[idx], s=2, alpha=0.25, color="tab:blue", rasterized=True)
    bias, sd = float(err.mean()), float(err.std())
    for value, style, label in ((bias, "-", f"bias {bias:.1f}"), (bias + 1.96 * sd, "--", f"+1.96 SD {bias + 1.96 * sd:.1f}"),
                                (bias - 1.96 * sd, "--", f"-1.96 SD {bias - 1.96 * sd:.1f}")):
        ax.axhline(value, color="red", ls=style, lw=1, label=label)
    ax.set_xlabel(f"mean of synthetic and reference ({units})")
    ax.set_ylabel(f"synthetic - reference ({units})")
    ax.set_title("Bland-Altman", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    if modality == "CT":
        names = ["air\n(< %d HU)" % AIR_MAX_HU, "soft tissue", "bone\n(> %d HU)" % BONE_MIN_HU]
        values = [metrics.get(k, math.nan) for k in ("mae_air", "mae_soft", "mae_bone")]
        bars = ax.bar(names, [0 if math.isnan(v) else v for v in values], color=["#8fb3d9", "#e5a46b", "#d9d9d9"],
                      edgecolor="black")
        for bar, value in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), "n/a" if math.isnan(value) else f"{value:.1f}",
                    ha="center", va="bottom", fontsize=9)
        ax.set_ylabel("MAE (HU)")
        ax.set_title("MAE per tissue class of the reference", fontsize=10)
    else:
        ax.bar(["MAE"], [metrics.get("mae", 0.0)], color="#8fb3d9", edgecolor="black")
        ax.set_ylabel(f"MAE ({units})")
        ax.set_title("MAE inside the mask", fontsize=10)
    return figure_png(fig)


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")
    return html.escape(str(value))


def left_out_notes(left_out: Mapping[str, Any]) -> list[str]:
    """Sentences for the cases a folder evaluation left out of its statistics and the predictions no case took."""
    notes = [f"Not evaluated (failed), not in the statistics: {case}: {why}"
             for case, why in dict(left_out.get("failed") or {}).items()]
    if left_out.get("no_prediction"):
        notes.append(f"{len(left_out['no_prediction'])} reference case(s) without a prediction, not in the "
                     f"statistics: {', '.join(left_out['no_prediction'])}.")
    if left_out.get("unmatched_predictions"):
        notes.append(f"Prediction file(s) matching no reference case: {', '.join(left_out['unmatched_predictions'])}.")
    return notes


def render_report(rows: Sequence[dict], aggregates: dict[str, dict[str, float]],
                  case_figures: dict[str, dict[str, bytes]] | None = None, title: str = "MedTranslate evaluation",
                  notes: Sequence[str] = ()) -> str:
    """The full HTML page: aggregate table, per-case table and figures, metric definitions."""
    case_figures = case_figures or {}
    stats = ("mean", "std", "median", "q1", "q3", "n")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
             "img{max-width:100%;border:1px solid #ddd;margin:4px 0}dt{font-weight:bold}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{len(rows)} case(s).</p>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Aggregate metrics</h2><table><tr><th>metric</th>"
                 + "".join(f"<th>{s}</th>" for s in stats) + "</tr>")
    for metric, values in aggregates.items():
        parts.append(f"<tr><td>{html.escape(metric)}</td>"
                     + "".join(f"<td>{_fmt(values.get(s, math.nan))}</td>" for s in stats) + "</tr>")
    parts.append("</table>")
    if rows:
        keys = [k for k in rows[0] if k not in ("case",)]
        parts.append("<h2>Per case</h2><table><tr><th>case</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
                     + "</tr>")
        for row in rows:
            parts.append(f"<tr><td>{_fmt(row.get('case', ''))}</td>"
                         + "".join(f"<td>{_fmt(row.get(k, ''))}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
    for case, figures in case_figures.items():
        parts.append(f"<h2>Case {html.escape(case)}</h2>")
        for name, png in figures.items():
            parts.append(f"<figure>{_img_tag(png, f'{case} {name}')}<figcaption>{html.escape(name)}</figcaption></figure>")
    parts.append("<h2 id='definitions'>Metric definitions</h2><p>CT metrics follow the official SynthRAD 2023 "
                 "(MAE, PSNR, SSIM) and SynthRAD 2025 (PSNR, MS-SSIM) evaluation definitions; all are computed "
                 "inside each case's mask (its region and voxels columns: the voxels compared).</p><dl>")
    for key, text in DEFINITIONS.items():
        parts.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(text)}</dd>")
    parts.append("</dl></body></html>")
    return "\n".join(parts)
