"""``medtranslate demo``: the whole path on the built-in default.

Renders a held-out head phantom (a seed the demo model never saw), translates its T1 MR to a synthetic
CT with the bundled model, measures it against the phantom's true CT and writes a side-by-side PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: The bundled MR -> CT model and the phantom seed it was not trained on.
DEMO_MODEL = "mr2ct-headphantom-unet2d"
DEMO_SEED = 1000


def run_demo(args: argparse.Namespace) -> int:
    """``medtranslate demo``: translate the built-in phantom and report its metrics; returns the exit code."""
    import SimpleITK as sitk

    from MedTranslateLib.progress import progress_display
    from MedTranslateLib.evaluation.metrics import compute_metrics
    from MedTranslateLib.io import write_volume
    from MedTranslateLib.io.itk_paths import itk_path
    from MedTranslateLib.phantom import make_head_phantom
    from MedTranslateLib.pipeline import translate_file

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or DEMO_MODEL
    print(f"MedTranslate demo: phantom seed {DEMO_SEED} (held out), model {model}")
    phantom = make_head_phantom(seed=DEMO_SEED)
    mr_path, ct_path, mask_path = out / "phantom_t1.nii.gz", out / "phantom_ct.nii.gz", out / "phantom_mask.nii.gz"
    write_volume(phantom.t1, mr_path, modality="MR", description="MedTranslate head phantom T1 (synthetic sample)")
    write_volume(phantom.ct, ct_path, modality="CT", description="MedTranslate head phantom CT (reference)")
    write_volume(phantom.mask, mask_path, modality="SEG", description="MedTranslate head phantom body mask")

    sct_path = out / "synthetic_ct.nii.gz"
    with progress_display("rich", "translate") as callback:
        result = translate_file(mr_path, model, sct_path, device=args.device, progress=callback)
    for warning in result.warnings:
        print(f"warning: {warning}")

    synthetic = sitk.GetArrayFromImage(sitk.ReadImage(itk_path(sct_path), sitk.sitkFloat32))
    reference = sitk.GetArrayFromImage(phantom.ct)
    mask = sitk.GetArrayFromImage(phantom.mask) > 0
    metrics = compute_metrics(synthetic, reference, mask, modality="CT")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    png = out / "demo.png"
    save_side_by_side(sitk.GetArrayFromImage(phantom.t1), synthetic, reference, png, phantom.t1.GetSpacing())
    print(f"synthetic CT: {sct_path}")
    print(f"side by side: {png}")
    print("against the phantom's true CT: " + ", ".join(
        f"{k} {metrics[k]:.3f}" for k in ("mae", "psnr", "ssim", "mae_bone", "dice_bone") if k in metrics))
    print(f"time: {sum(result.seconds.values()):.1f} s "
          + "(" + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()) + ")")
    return 0


def save_side_by_side(mr: np.ndarray, synthetic: np.ndarray, reference: np.ndarray, path: Path,
                      spacing_xyz: Sequence[float]) -> None:
    """Input MR | synthetic CT | reference CT | difference, axial and coronal, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    z, y = mr.shape[0] // 2, mr.shape[1] // 2
    aspect = spacing_xyz[2] / spacing_xyz[0]
    panels = [("input T1 MR", mr, "gray", None), ("synthetic CT (HU)", synthetic, "gray", (-1000, 1500)),
              ("reference CT (HU)", reference, "gray", (-1000, 1500)),
              ("synthetic - reference (HU)", synthetic - reference, "coolwarm", (-500, 500))]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for col, (title, volume, cmap, limits) in enumerate(panels):
        vmin, vmax = limits if limits else np.percentile(volume, [1, 99.5])
        axes[0, col].imshow(volume[z], cmap=cmap, vmin=vmin, vmax=vmax)
        im = axes[1, col].imshow(volume[::-1, y, :], cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
        axes[0, col].set_title(title)
        fig.colorbar(im, ax=axes[:, col], shrink=0.6)
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle("MedTranslate demo (phantom, research use only): axial (top) and coronal (bottom)")
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
