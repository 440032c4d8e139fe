"""Where a training run writes: the package and work folder checked before training, the logs in the work
folder, and the removal of a work folder a failed run created and left without a checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.training.config import TrainConfig


class Logger:
    """CSV and optional TensorBoard logs in the work folder (rank 0; none with ``log = "none"``)."""

    LOGS = ("train_log", "validation_log")  # the CSV files written (<name>.csv)

    def __init__(self, folder: Path, kind: str, enabled: bool, resume: bool = False) -> None:
        self.enabled = enabled
        self.folder = folder
        self.tb = None
        if enabled and not resume:  # a new run starts new logs (a resumed one continues its own)
            for name in self.LOGS:  # only its own: other *_log.csv files may be the user's
                (folder / f"{name}.csv").unlink(missing_ok=True)
        if enabled and kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # TrainConfig.validate checked it is installed

            self.tb = SummaryWriter(str(folder / "tensorboard"))

    def write(self, name: str, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.folder / f"{name}.csv"
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"{name}/{key}", value, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def check_destinations(config: TrainConfig) -> None:
    """The package and the work folder can be written, outside the training data: checked before training."""
    from MedTranslateLib.models.export import check_export_destination

    final = check_export_destination(config.output, as_zip=config.export_zip)
    data = Path(config.data)
    if data.is_dir():
        for what, path in (("output", final), ("work folder", config.work_path)):
            if path.resolve().is_relative_to(data.resolve()):
                raise ConfigError(f"The {what} {path} is inside the training data folder {data}.",
                                  "Write the package (and its .work folder) outside the data folder.")
    _check_apart(final, config.work_path)
    _check_work_folder(config)


def _check_apart(package: Path, work: Path) -> None:
    """The work folder is neither the package nor inside it, and does not hold it: the export replaces the
    package folder, and a failed run may remove the work folder it made."""
    package_at, work_at = package.resolve(), work.resolve()
    if package_at == work_at or work_at.is_relative_to(package_at) or package_at.is_relative_to(work_at):
        where = ("is" if package_at == work_at else "is inside" if work_at.is_relative_to(package_at)
                 else "contains")
        raise ConfigError(f"The work folder {work} {where} the package {package}.",
                          "Give --work-dir a folder apart from --output (or leave it out: <output>.work).")


#: What a run writes into its work folder (also ``.checkpoint.*``: a checkpoint being written), and what the file
#: browsers of macOS and Windows leave in a folder.
_RUN_OUTPUTS = ("checkpoint", "best.safetensors", "tensorboard", *(f"{name}.csv" for name in Logger.LOGS))
_WORK_NAMES = (*_RUN_OUTPUTS, ".DS_Store", "Thumbs.db", "desktop.ini")


def _check_work_folder(config: TrainConfig) -> None:
    """The work folder can be created (or written), and unless the run resumes it holds nothing but what an
    earlier run wrote (a new run starts that afresh): a folder of the user's own files is refused."""
    from MedTranslateLib.errors import OutputError
    from MedTranslateLib.io.atomic import check_folder_writable

    work = config.work_path.absolute()
    existing = next(path for path in (work, *work.parents) if path.exists() or path.is_symlink())
    if not existing.is_dir():
        where = "it" if existing == work else existing
        raise OutputError(f"Cannot create the work folder {config.work_path}: {where} is not a folder.",
                          "Choose another --work-dir (or --output), or move that file away.")
    check_folder_writable(existing, f"the work folder {config.work_path}")
    foreign = [] if config.resume or existing != work else _foreign_files(work)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"The work folder {config.work_path} is not empty and not a training's work folder: it "
                          f"holds {shown}.", "Choose a new or empty --work-dir (or another --output), or move those "
                          "files away: a run writes its checkpoint, best weights and logs there.")


def _foreign_files(work: Path) -> list[str]:
    """The names in a work folder that no training run wrote there."""
    ours = set(_WORK_NAMES)
    return sorted(p.name for p in work.iterdir() if p.name not in ours and not p.name.startswith(".checkpoint."))


def remove_unfinished_work(work: Path, logger: Logger | None) -> None:
    """Remove the work folder of a run that created it and failed before it wrote anything worth keeping: no
    checkpoint, best weights or log rows (a run that diverged at step 400 keeps the losses that show why)."""
    import shutil

    if logger is not None:
        logger.close()  # its TensorBoard file is open
    if not any((work / name).exists() for name in _RUN_OUTPUTS):
        shutil.rmtree(work, ignore_errors=True)


def first_missing_folder(path: Path) -> Path | None:
    """The topmost folder of ``path`` (or ``path`` itself) that does not exist yet: what a run would create."""
    missing = [folder for folder in (path.absolute(), *path.absolute().parents)
               if not (folder.exists() or folder.is_symlink())]
    return missing[-1] if missing else None


def remove_empty_folders(folder: Path, top: Path) -> None:
    """Remove ``folder`` and the folders above it, up to and including ``top``, while they are empty (the folders
    a failed run created for its work folder and package)."""
    folder = folder.absolute()
    while folder.is_dir() and folder.is_relative_to(top) and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
