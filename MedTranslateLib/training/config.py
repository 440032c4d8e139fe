"""Training configuration: a flat dataclass loaded from JSON or TOML with ``key=value`` overrides."""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from MedTranslateLib.errors import ConfigError, ModelError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class TrainConfig:
    """Everything a training run needs; every field can be set in the file or with ``--set key=value``."""

    # what
    family: str = "unet"
    dimensionality: str = "2d"                       # 2d | 2.5d | 3d
    source_modality: str = "MR"
    target_modality: str = "CT"
    # data
    data: str = ""
    layout: str = "auto"
    source_name: str | None = None                   # file stem override for generic layouts
    target_name: str | None = None
    subject_folder: str = "case"                     # case | parent (case folders inside subject folders)
    split: str = "subject"                           # subject | zslab
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    train_subjects: list[str] | None = None
    val_subjects: list[str] | None = None
    test_subjects: list[str] | None = None
    slab_gap: int = 4
    max_cases: int | None = None
    # model and preprocessing
    architecture: dict[str, Any] = field(default_factory=dict)
    normalization_input: dict[str, Any] | None = None
    normalization_output: dict[str, Any] | None = None
    body_mask: dict[str, Any] | None = None
    spacing: list[float] | None = None               # x, y, z mm; None = native spacing
    orientation: str | None = None
    slice_axis: str = "axial"
    context_slices: int | None = None                # 2.5d: neighbours on each side (default 2)
    slice_size: list[int] | None = None              # 2d/2.5d in-plane training crop (y, x)
    patch_size: list[int] = field(default_factory=lambda: [32, 64, 64])
    overlap: float = 0.5
    # optimisation
    batch_size: int = 4
    lr: float = 2e-4
    lr_schedule: str = "constant"                    # constant | cosine (to lr * min_lr_fraction at the last step)
    warmup_steps: int = 0                            # linear warm-up from lr / warmup_steps
    min_lr_fraction: float = 0.05
    steps: int = 1000
    epochs: int | None = None                        # if set: steps = epochs * steps_per_epoch
    steps_per_epoch: int | None = None               # default: body slices (or patches) / batch size
    val_interval: int = 200
    checkpoint_interval: int = 500
    log_interval: int = 10
    body_fraction: float = 0.9                       # share of samples centred on a body voxel
    augment: bool = False
    contrast_augment: bool = False                   # random monotone source-contrast remapping (other sequences)
    family_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    log: str = "csv"                                 # csv | tensorboard (csv too) | none
    # output
    output: str = "model_package"
    work_dir: str | None = None                      # checkpoints and logs (default: <output>.work)
    resume: bool = False
    export_half: bool = False
    export_zip: bool = False
    # card
    model_id: str = "custom-model"
    title: str = "Custom MedTranslate model"
    version: str = "0.1.0"
    description: str = ""
    anatomy: str = "unspecified"
    field_of_view: str = "as in the training data"
    license: str = "CC-BY-4.0"
    citation: str = ""
    intended_use: str = "Research on medical image translation; not for clinical use."
    limitations: str = ("Trained on a small dataset; expect errors on other scanners, protocols, anatomy and "
                        "outside the training field of view.")
    sample_data: list[dict[str, Any]] | None = None  # the card's Slicer sample volumes ({name, sample, sha256})

    # ---------------------------------------------------------------- derived values
    @property
    def spatial_dims(self) -> int:
        return 3 if self.dimensionality == "3d" else 2

    @property
    def n_context(self) -> int:
        if self.dimensionality != "2.5d":
            return 0
        return 2 if self.context_slices is None else int(self.context_slices)

    @property
    def work_path(self) -> Path:
        """``work_dir``, else ``<output>.work`` beside the package (``o/m/`` and ``o/m.ZIP`` give ``o/m.work``)."""
        if self.work_dir:
            return Path(self.work_dir)
        output = Path(str(self.output))
        if output.name in ("", ".", ".."):  # "." or "..": name the folder itself
            output = Path(os.path.abspath(output))
        name = output.name[:-4] if output.name.lower().endswith(".zip") else output.name
        return output.with_name(name + ".work")

    def input_normalization(self) -> dict[str, Any]:
        if self.normalization_input:
            return dict(self.normalization_input)
        return default_normalization(self.source_modality, role="input")

    def output_normalization(self) -> dict[str, Any]:
        if self.normalization_output:
            return dict(self.normalization_output)
        return default_normalization(self.target_modality, role="output")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _validate_split(self) -> None:
        """The held-out fractions leave data to train on; zslab settings it cannot honour are refused."""
        for key in ("val_fraction", "test_fraction"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise ConfigError(f"{key} must be at least 0 and below 1 (got {getattr(self, key)}).",
                                  f"For example {key} = 0.2 (0 holds nothing out).")
        if float(self.val_fraction) + float(self.test_fraction) >= 1.0:
            raise ConfigError(f"val_fraction + test_fraction must be below 1 (got {self.val_fraction} + "
                              f"{self.test_fraction}): nothing would be left to train on.",
                              "Lower one of them, e.g. val_fraction = 0.2, test_fraction = 0.1.")
        if int(self.slab_gap) < 0:
            raise ConfigError(f"slab_gap must be 0 or more (got {self.slab_gap}).", "For example slab_gap = 4.")
        listed = [key for key in ("val_subjects", "test_subjects") if getattr(self, key)]
        if self.split == "zslab" and listed:
            raise ConfigError(f"split = \"zslab\" holds out slabs of one volume and does not use "
                              f"{' or '.join(listed)}.",
                              "Remove them and set val_fraction / test_fraction (shares of the volume's slices), or "
                              "use split = \"subject\" to hold out whole subjects.")

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for values that cannot work."""
        choices = {"dimensionality": ("2d", "2.5d", "3d"), "split": ("subject", "zslab"),
                   "subject_folder": ("case", "parent"), "slice_axis": ("axial", "coronal", "sagittal"), "log": ("csv", "tensorboard", "none"),
                   "lr_schedule": ("constant", "cosine")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} = {getattr(self, key)!r} is not allowed.", f"Use one of {allowed}.")
        for key in _FLOAT_FIELDS:
            if not math.isfinite(float(getattr(self, key))):
                raise ConfigError(f"{key} must be a finite number (got {getattr(self, key)}).",
                                  f"Write e.g. {key}={_FIELDS[key].default}.")
        for key in ("batch_size", "steps", "val_interval", "checkpoint_interval", "log_interval"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1 (got {getattr(self, key)}).", "Give a positive integer.")
        if int(self.warmup_steps) < 0 or not 0.0 <= float(self.min_lr_fraction) <= 1.0:
            raise ConfigError(f"warmup_steps must be >= 0 and min_lr_fraction in [0, 1] (got {self.warmup_steps}, "
                              f"{self.min_lr_fraction}).", "For example warmup_steps = 50, min_lr_fraction = 0.05.")
        for key in ("max_cases", "epochs", "steps_per_epoch"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1 (got {getattr(self, key)}).",
                                  "Give a positive integer, or leave it out.")
        self._validate_split()
        if self.context_slices is not None and int(self.context_slices) < 0:
            raise ConfigError(f"context_slices must be 0 or more (got {self.context_slices}).", "For example 2.")
        # settings the chosen dimensionality would silently ignore
        if self.context_slices is not None and self.dimensionality != "2.5d":
            raise ConfigError(f"context_slices is for 2.5d models; a {self.dimensionality} model takes no neighbouring "
                              "slices.", "Set dimensionality = \"2.5d\", or leave context_slices out "
                                         "(--set context_slices=null).")
        if self.slice_size is not None and self.dimensionality == "3d":
            raise ConfigError("slice_size is the 2d/2.5d training crop; a 3d model trains on patch_size windows.",
                              "Set patch_size (z, y, x) instead, or leave slice_size out (--set slice_size=null).")
        if not 0.0 <= float(self.body_fraction) <= 1.0:
            raise ConfigError(f"body_fraction must be between 0 and 1 (got {self.body_fraction}).", "For example 0.9.")
        if self.spacing is not None and not (isinstance(self.spacing, list) and len(self.spacing) == 3 and all(
                isinstance(v, (int, float)) and 0.01 <= v <= 100 for v in self.spacing)):
            raise ConfigError(f"spacing must be 3 values in mm (x, y, z), each 0.01 to 100 (got {self.spacing!r}).",
                              "For example spacing = [1.0, 1.0, 3.0], or leave it out for the native spacing.")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive (got {self.lr}).", "For example lr = 2e-4.")
        if not self.data:
            raise ConfigError("No training data given.", "Set data (a dataset folder or CSV) or pass --data.")
        if self.dimensionality == "3d" and len(self.patch_size) != 3:
            raise ConfigError("patch_size needs 3 values (z, y, x).", "For example patch_size = [32, 64, 64].")
        from MedTranslateLib.families import check_training_settings
        from MedTranslateLib.preprocess.body_mask import check_settings as check_body_mask
        from MedTranslateLib.preprocess.normalization import check_spec

        check_training_settings(self.family, self.architecture, self.family_options)
        for role, spec in (("input", self.input_normalization()), ("output", self.output_normalization())):
            try:
                check_spec(spec, role)
            except ModelError as exc:
                raise ConfigError(f"normalization_{role}: {exc.problem}", exc.fix) from None
        try:
            check_body_mask(self.body_mask, self.source_modality)
        except ModelError as exc:
            raise ConfigError(exc.problem, exc.fix) from None
        if self.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("log = tensorboard needs the tensorboard package, which is not installed.",
                              "Install it (pip install tensorboard, or the [tensorboard] extra), or use log = csv.")
        return self


def default_normalization(modality: str, role: str = "input") -> dict[str, Any]:
    """CT/CBCT: clip [-1024, 3071]; MR: percentiles [0.5, 99.5] in the body mask (outputs map to [0, 1000])."""
    from MedTranslateLib.preprocess.modality import CT_LIKE

    if modality.upper() in CT_LIKE:
        spec: dict[str, Any] = {"method": "clip", "range": [-1024.0, 3071.0]}
        if role == "output":
            spec["background"] = -1024.0
        return spec
    spec = {"method": "percentile", "percentiles": [0.5, 99.5], "within_mask": True}
    if role == "output":
        spec.update({"output_range": [0.0, 1000.0], "background": 0.0})
    return spec


_FIELDS = {f.name: f for f in fields(TrainConfig)}
DICT_FIELDS = ("architecture", "family_options", "normalization_input", "normalization_output", "body_mask")
#: The keys that only word the model card.
CARD_TEXT_KEYS = ("model_id", "title", "version", "description", "anatomy", "field_of_view", "license", "citation",
                  "intended_use", "limitations", "sample_data")
#: The keys a resumed run may change besides ``CARD_TEXT_KEYS``: they steer the run (its length, validation and
#: checkpoint schedule, logs, device, output) and cannot change what was learned from which data.
RESUME_FREE_KEYS = ("steps", "epochs", "steps_per_epoch", "val_interval", "checkpoint_interval", "log_interval", "log",
                    "device", "amp", "deterministic", "output", "work_dir", "resume", "export_half", "export_zip")


#: The keys whose value is text: kept as written (``--set version=1.10`` is "1.10", not the number 1.1).
TEXT_FIELDS = tuple(name for name, f in _FIELDS.items() if f.type in ("str", "str | None"))
#: The subject lists: a JSON list, or one subject or a comma-separated text (``1PA001,1PA003``).
SUBJECT_LIST_FIELDS = ("train_subjects", "val_subjects", "test_subjects")
_FLOAT_FIELDS = tuple(name for name, f in _FIELDS.items() if f.type == "float")
#: TOML sections (``[data]``, ``[model]``, ``[train]``, ``[card]``, ``[output]``) only group keys: they are
#: flattened, and ``section.key`` (``--set train.batch_size=2``) names the key.
SECTIONS = ("data", "model", "train", "card", "output")
#: Other names for keys (the flags' names and common spellings).
ALIASES = {"source": "source_modality", "target": "target_modality", "id": "model_id", "learning_rate": "lr"}
_KEYS_HINT = "See docs/TRAINING.md section 3 for the known keys."


def _coerce(key: str, value: Any, text: bool = False) -> Any:
    """Turn a value into the field's type. ``text``: the value is ``--set`` text (a text key takes it as written,
    or unquoted when it is a JSON string; other keys read it as JSON: numbers, lists, objects, true/false/null)."""
    default = _FIELDS[key].default
    if key in TEXT_FIELDS:
        return _coerce_text(key, value, text)
    if key in SUBJECT_LIST_FIELDS:
        return _coerce_subjects(key, value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(default, bool) and not isinstance(value, bool):
        if str(value).lower() in ("1", "yes", "on", "true"):
            return True
        if str(value).lower() in ("0", "no", "off", "false"):
            return False
        raise ConfigError(f"{key} must be true or false (got {value!r}).", f"Write {key}=true or {key}=false.")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (key in _INT_FIELDS or isinstance(default, int) and not isinstance(default, bool)) and number:
        if not math.isfinite(value) or float(value) != int(value):
            raise ConfigError(f"{key} must be an integer (got {value!r}).",
                              f"Write e.g. {key}={int(value) if math.isfinite(value) else 4}.")
        return int(value)
    if isinstance(default, float) and number:
        return float(value)
    _check_type(key, value, default)
    return value


def _coerce_text(key: str, value: Any, text: bool) -> str | None:
    """A text key's value: a string as written (``--set`` text: a JSON string unquoted, ``null`` = None)."""
    nullable = _FIELDS[key].type == "str | None"
    if text and isinstance(value, str):
        if value == "null" and nullable:
            return None
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
    if isinstance(value, str) or (value is None and nullable):
        return value
    raise ConfigError(f"{key} must be text (got {value!r}).",
                      f'Write it in quotes, e.g. {key} = "{value}" in a config file.')


def _coerce_subjects(key: str, value: Any) -> list[str] | None:
    """A subject list: a list of strings, from a JSON list, one subject or a comma-separated text."""
    if isinstance(value, str):
        if value.strip().startswith("[") or value.strip() == "null":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key} is not a valid JSON list ({exc.msg}).",
                                  f"Write e.g. {key}='[\"1PA001\", \"1PA003\"]' or {key}=1PA001,1PA003.") from None
        else:
            value = [part.strip() for part in value.split(",") if part.strip()]
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{key} must be a list of subject ids as text (got {value!r}).",
                          f'Write e.g. {key} = ["1PA001", "1PA003"] (ids in quotes), or --set {key}=1PA001,1PA003.')
    return value


#: Fields whose default is None, by the type their value must have.
_INT_FIELDS = ("max_cases", "context_slices", "epochs", "steps_per_epoch")
_INT_LIST_FIELDS = {"slice_size": 2, "patch_size": 3}


def _check_type(key: str, value: Any, default: Any) -> None:
    """Raise :class:`ConfigError` when ``value`` cannot be the field's type (text for a number, a list of the
    wrong length, ...)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (isinstance(default, (int, float)) and not isinstance(default, bool)) and not number:
        raise ConfigError(f"{key} must be a number (got {value!r}).", f"Write e.g. {key}={default}.")
    if key in _INT_FIELDS and value is not None and not (number and float(value) == int(value)):
        raise ConfigError(f"{key} must be a whole number (got {value!r}).", f"Write e.g. {key}=4.")
    if key in _INT_LIST_FIELDS and value is not None:
        size = _INT_LIST_FIELDS[key]
        if not (isinstance(value, list) and len(value) == size
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in value)):
            raise ConfigError(f"{key} must be {size} whole numbers of at least 8 (got {value!r}).",
                              f"Write e.g. {key}={[64] * size}.")
    if key in DICT_FIELDS and value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table of settings (got {value!r}).",
                          f"Write e.g. --set '{key}={{\"features\": [32, 64, 128]}}'." if key == "architecture"
                          else "Write it as a JSON object or a TOML table.")
    if key == "sample_data" and value is not None and not (
            isinstance(value, list) and all(isinstance(v, Mapping) for v in value)):
        raise ConfigError(f"sample_data must be a list of tables {{name, sample, sha256}} (got {value!r}).",
                          "Write it as [[sample_data]] tables (or sample_data = [{...}, ...]) in TOML, or a JSON "
                          "list of objects.")


def _unknown_key(key: str) -> ConfigError:
    """The error for a key that is no setting: a close match, or where an architecture/family key belongs."""
    try:
        from MedTranslateLib.families import FAMILY_NAMES, get_family

        families = [get_family(name) for name in FAMILY_NAMES]
    except Exception:  # pragma: no cover - a broken family module must not hide the real message
        families = []
    for setting, attribute in (("architecture", "architecture_keys"), ("family_options", "option_keys")):
        if any(key in getattr(family, attribute, ()) for family in families):
            return ConfigError(f"Unknown training setting {key!r}: it is a key of {setting}.",
                               f"Give it inside {setting}, e.g. --set '{setting}={{\"{key}\": ...}}', or "
                               f"{setting} = {{ {key} = ... }} in a TOML file.")
    close = difflib.get_close_matches(key, [*_FIELDS, *ALIASES, *SECTIONS], n=3)
    hint = f"Did you mean {', '.join(close)}?" if close else _KEYS_HINT
    return ConfigError(f"Unknown training setting {key!r}.", f"Remove it or fix the name. {hint}")


def _field_name(key: str) -> str:
    """The field a key names: dashes as underscores, a ``section.`` prefix dropped, aliases resolved."""
    key = str(key).strip().replace("-", "_")
    section, dot, rest = key.partition(".")
    if dot and section in SECTIONS:
        key = rest
    key = ALIASES.get(key, key)
    if key not in _FIELDS:
        raise _unknown_key(key)
    return key


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None, text: bool = False) -> TrainConfig:
    """A config from a (possibly sectioned) mapping; unknown keys raise :class:`ConfigError` naming the key.
    ``text``: the values are ``--set`` text (see :func:`_coerce`)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"Training settings must be a table of key = value (got {type(values).__name__}).",
                          "Write a TOML file of keys (and [data], [model], [train], [card] sections) or a JSON "
                          "object {\"key\": value, ...}.")
    config = base or TrainConfig()
    flat: list[tuple[str, Any]] = []
    for key, value in values.items():
        # the known sections ([train], [data], ...) are flattened; every other table is a key's value
        if key in SECTIONS and isinstance(value, Mapping):
            flat.extend(value.items())
        else:
            flat.append((key, value))
    for key, value in flat:
        name = _field_name(key)
        setattr(config, name, _coerce(name, value, text))
    return config


def bundled_configs() -> dict[str, Path]:
    """The training configs that ship with the package, by name: the shipped models' and ``example_train``."""
    package = Path(__file__).resolve().parent.parent
    paths = sorted((package / "configs").glob("*.toml")) + [package / "training" / "example_train.toml"]
    return {path.stem: path for path in paths if path.is_file()}


def find_config(name: Path | str) -> Path:
    """A config file path, or the name of a bundled config (``mr2ct-phantom-unet2d``, ``example_train``)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if path.name == str(name) and path.name.removesuffix(".toml") in bundled:
        return bundled[path.name.removesuffix(".toml")]
    if path.is_dir():
        raise ConfigError(f"The training config {name} is a folder, not a config file.",
                          "Give the TOML or JSON file in it (--config folder/train.toml).")
    raise ConfigError(f"The training config {name} does not exist.",
                      f"Give a config file's path or a bundled config's name: {', '.join(bundled)}.")


def load_config(path: Path | str | None = None, overrides: Iterable[str] = (),
                **explicit: Any) -> TrainConfig:
    """Read a JSON or TOML file (or a bundled config by name), then apply ``key=value`` overrides, then explicit
    (non-None) keyword values."""
    config = TrainConfig()
    if path:
        path = find_config(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # TOML and JSON are UTF-8 (a byte-order mark is dropped)
            values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                              "Save it with the UTF-8 encoding (TOML and JSON files are UTF-8).") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Cannot parse {path}: {exc}.", "Fix the syntax (TOML for .toml, else JSON).") from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path} holds {type(values).__name__}, not a table of settings.",
                              "Write key = value lines (TOML) or one JSON object {\"key\": value, ...}.")
        config = config_from_dict(values, config)
        if config.data:  # ~ is the home folder; a relative data folder is the config file's neighbour
            config.data = os.path.expanduser(config.data)
            if not Path(config.data).is_absolute():
                config.data = str((path.parent / config.data).resolve())
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not key=value.", "Write e.g. --set lr=1e-4.")
        key, value = item.split("=", 1)
        parsed[key.strip()] = value.strip()
    config = _latest_length_wins(config, config_from_dict(parsed, replace(config), text=True), parsed)
    given = {k: v for k, v in explicit.items() if v is not None}
    config = _latest_length_wins(config, config_from_dict(given, replace(config)), given)
    for key in ("data", "output", "work_dir"):  # no shell expands ~ in a file or in --set text
        if getattr(config, key):
            setattr(config, key, os.path.expanduser(getattr(config, key)))
    return config


def _latest_length_wins(before: TrainConfig, after: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """``steps`` given in a later layer (--set after the file, a flag after --set) clears an earlier ``epochs``
    (which would otherwise override it); ``epochs`` in the same layer still wins."""
    keys = set()
    for key in given:
        try:
            keys.add(_field_name(key))
        except ConfigError:
            pass
    if "steps" in keys and "epochs" not in keys and before.epochs is not None:
        after.epochs = None
    return after
