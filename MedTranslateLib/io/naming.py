"""The names ``medtranslate translate`` gives the outputs of a batch, which ``medtranslate evaluate`` finds again."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from MedTranslateLib.io.atomic import full_suffix, volume_stem


def batch_outputs(inputs: Sequence[str | os.PathLike], folder: Path) -> list[Path]:
    """``<folder>/<input name>_synthetic.nii.gz`` per input. Inputs with the same name get their folder's name in
    front (SynthRAD's ``<case>/mr.nii.gz`` -> ``<case>_mr_synthetic.nii.gz``, found by case by evaluate), then the
    names of the further folders that tell them apart after it (levels they share are skipped: the same case
    from two sites -> ``<case>_mr_<site>_synthetic.nii.gz``), then their format (``in_mr_mha``, ``in_mr_nhdr``)."""
    paths = [Path(os.path.abspath(p)) for p in inputs]
    names = [volume_stem(p) for p in paths]

    def clashes() -> list[list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            groups[name.casefold()].append(index)  # T1 and t1 are one file name on macOS and Windows
        return [group for group in groups.values() if len(group) > 1]

    for level in range(max((len(p.parents) for p in paths), default=0)):
        for group in clashes():
            parts = [paths[i].parents[level].name if level < len(paths[i].parents) else "" for i in group]
            if level == 0 or len(set(parts)) > 1:  # the case folder, then the levels that tell them apart
                for i, part in zip(group, parts):
                    names[i] = (f"{part}_{names[i]}" if level == 0 else f"{names[i]}_{part}") if part else names[i]
    for group in clashes():
        for i in group:
            names[i] = f"{names[i]}_{full_suffix(paths[i]).strip('.').replace('.', '_')}"
    for group in clashes():  # rare left-overs: a number; the same input twice keeps its clash (refused later)
        for number, i in enumerate(group[1:], start=2):
            if paths[i] != paths[group[0]]:
                names[i] = f"{names[i]}_{number}"
    return [folder / f"{name}_synthetic.nii.gz" for name in names]
