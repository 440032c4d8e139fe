"""Model cards (``model.json``): schema validation with clear field-path errors, and human-readable text.

A card says what a model translates (modalities, anatomy, field of view), how (family, dimensionality,
architecture, normalisation), how well (held-out metrics and on which data), and under which terms
(licence, citation, intended use, limitations; never for clinical use).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from MedTranslateLib.errors import ModelError

SCHEMA_PATH = Path(__file__).with_name("model.schema.json")
#: model.json larger than this is refused before it is parsed.
MAX_CARD_BYTES = 1024 * 1024
#: deepest nesting of lists and objects a model.json may have (a card needs 5)
MAX_CARD_DEPTH = 32
#: the card format (``schema_version``) this version reads
CARD_FORMAT = 1


@lru_cache(maxsize=1)
def card_schema() -> dict[str, Any]:
    """The JSON schema of ``model.json`` (loaded once)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _field_path(error: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    text = ".".join(parts).replace(".[", "[")
    return text or "(top level)"


def _explain(error: Any) -> str:
    """One line: the field path, the problem, what is expected."""
    field = _field_path(error)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        where = "" if field == "(top level)" else f" in {field}"
        return f"missing field '{missing}'{where}"
    if error.validator == "additionalProperties":
        return f"{field}: {error.message}"
    if error.validator == "enum":
        return f"{field}: {error.instance!r} is not allowed; expected one of {error.validator_value}"
    if error.validator == "const":
        return f"{field}: expected {json.dumps(error.validator_value)}, got {error.instance!r}"
    if error.validator == "pattern":
        return f"{field}: {error.instance!r} does not match the expected pattern {error.validator_value}"
    if error.validator == "type":
        return f"{field}: expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator in ("oneOf", "anyOf") and error.context:
        inner = min(error.context, key=lambda e: len(list(e.absolute_path)))
        return f"{field}: {error.instance!r} is not valid ({inner.message})"
    return f"{field}: {error.message}"


def validate_card(data: Any, source: str = "model.json") -> "ModelCard":
    """Validate a parsed card; all schema errors become one ``ModelError`` naming ``source`` and field paths."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > CARD_FORMAT:
        raise ModelError(f"The model card {source} was made by a newer MedTranslate (card format {version}; this "
                         f"version reads format {CARD_FORMAT}).",
                         "Update MedTranslate to use this model, or ask its author for a package in the older format.")
    validator = Draft202012Validator(card_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        best = best_match(errors)
        others = [_explain(e) for e in errors if e is not best][:4]
        more = f" Other problems: {'; '.join(others)}." if others else ""
        raise ModelError(
            f"The model card {source} is invalid: {_explain(best)}.{more}",
            f"Fix the field(s) named above (see {SCHEMA_PATH}), "
            "or re-export the package with 'medtranslate train' / export_package().",
        )
    from MedTranslateLib.models.architecture import architecture_problems
    from MedTranslateLib.preprocess.body_mask import check_settings as check_body_mask
    from MedTranslateLib.preprocess.normalization import check_spec

    problems = architecture_problems(data["family"], data["architecture"])
    if problems:
        raise ModelError(f"The model card {source} is invalid: {'; '.join(problems)}.",
                         "Fix the architecture in model.json (it must describe the network the weights were "
                         "trained as), or re-export the package.")

    checks = [(f"normalization.{role}", check_spec, data["normalization"][role], role) for role in ("input", "output")]
    checks.append(("body_mask", check_body_mask, data.get("body_mask"), data["source_modality"]))
    for field, check, settings, argument in checks:
        try:
            check(settings, argument)
        except ModelError as exc:
            raise ModelError(f"The model card {source} is invalid: {field}: {exc.problem}", exc.fix) from None
    return ModelCard(copy.deepcopy(dict(data)))


def card_too_large(size: int, source: str) -> ModelError:
    """The error for a model.json over ``MAX_CARD_BYTES``."""
    return ModelError(f"The model card {source} is {size} bytes, more than the {MAX_CARD_BYTES} allowed.",
                      "A model.json is a small text file; this package is not a MedTranslate model.")


def parse_card_bytes(raw: bytes, source: str = "model.json") -> "ModelCard":
    """Parse and validate the bytes of a ``model.json`` (size-capped, UTF-8 JSON)."""
    if len(raw) > MAX_CARD_BYTES:
        raise card_too_large(len(raw), source)
    try:  # a byte-order mark (Windows editors) is dropped; NaN / Infinity are not numbers a card can use
        data = json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_non_finite)
    except UnicodeDecodeError as exc:
        raise ModelError(f"The model card {source} is not UTF-8 text ({exc.reason}).",
                         "Re-export the package; model.json must be UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"The model card {source} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}.", "Fix the JSON syntax or re-export the package.") from None
    except ValueError as exc:  # from _refuse_non_finite
        raise ModelError(f"The model card {source} holds {exc}, which is not a number a card can use.",
                         "Give finite numbers (NaN and Infinity are not JSON), or re-export the package.") from None
    except RecursionError:  # deeper than Python's parser goes
        raise _too_deep(source) from None
    if _depth(data) > MAX_CARD_DEPTH:  # validation and copies recurse as well
        raise _too_deep(source)
    weights = data.get("weights") if isinstance(data, dict) else None
    if isinstance(weights, dict) and isinstance(weights.get("sha256"), str):
        weights["sha256"] = weights["sha256"].lower()  # e.g. PowerShell's Get-FileHash prints upper case
    return validate_card(data, source=source)


def _too_deep(source: str) -> ModelError:
    return ModelError(f"The model card {source} is nested too deeply (more than {MAX_CARD_DEPTH} levels of lists "
                      "and objects).", "The file is damaged or is not a model card: re-export the package.")


def _depth(data: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (iteratively: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_CARD_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _refuse_non_finite(token: str) -> Any:
    raise ValueError(token)


def load_card(path: str | Path) -> "ModelCard":
    """Read and validate a ``model.json`` file (or the ``model.json`` inside a package folder)."""
    card_path = Path(path)
    if card_path.is_dir() and card_path.name != "model.json":  # a package folder (not a folder named model.json)
        card_path = card_path / "model.json"
    try:
        size = card_path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise card_too_large(size, str(card_path))
        raw = card_path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"No model card at {card_path}.",
                         "A model package is a folder (or .zip) holding model.json and its weights file.") from None
    except OSError as exc:
        raise ModelError(f"Cannot read the model card {card_path}: {exc.strerror}.",
                         "Check the file permissions.") from None
    return parse_card_bytes(raw, source=str(card_path))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _split_text(split: Any) -> str:
    """The training split for people: a z-slab's [start, stop) ranges as slice ranges ("slices 0-59")."""
    if not isinstance(split, Mapping) or split.get("method") != "z-slab":
        return _fmt(split)
    parts = {k: (f"slices {v[0]}-{v[1] - 1}" if isinstance(v, (list, tuple)) and len(v) == 2 else v)
             for k, v in split.items() if k in ("train", "val", "test") and v}
    rest = {k: v for k, v in split.items() if k not in ("train", "val", "test")}
    return ", ".join([f"{k} {v}" for k, v in parts.items()] + [f"{k}={_fmt(v)}" for k, v in rest.items()])


class ModelCard:
    """A validated model card. Read fields with the properties or ``to_dict()`` (a deep copy)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __repr__(self) -> str:
        return f"ModelCard({self.id}@{self.version})"

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        """A deep copy of a top-level field, or ``default``."""
        return copy.deepcopy(self._data.get(key, default))

    def to_dict(self) -> dict[str, Any]:
        """The card as a plain dict (a deep copy: changing it does not change the card)."""
        return copy.deepcopy(self._data)

    @property
    def id(self) -> str:
        return self._data["id"]

    @property
    def version(self) -> str:
        return self._data["version"]

    @property
    def title(self) -> str:
        return self._data["title"]

    @property
    def family(self) -> str:
        return self._data["family"]

    @property
    def dimensionality(self) -> str:
        return self._data["dimensionality"]

    @property
    def spatial_dims(self) -> int:
        """2 for 2D and 2.5D models (slice-wise networks), 3 for 3D models."""
        return 3 if self.dimensionality == "3d" else 2

    @property
    def source_modality(self) -> str:
        return self._data["source_modality"]

    @property
    def target_modality(self) -> str:
        return self._data["target_modality"]

    @property
    def anatomy(self) -> str:
        return self._data["anatomy"]

    @property
    def field_of_view(self) -> str:
        return self._data["field_of_view"]

    @property
    def in_channels(self) -> int:
        return int(self._data["architecture"]["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self._data["architecture"]["out_channels"])

    @property
    def license(self) -> str:
        return self._data["license"]

    @property
    def weights_file(self) -> str:
        return self._data["weights"]["file"]

    @property
    def weights_sha256(self) -> str:
        return self._data["weights"]["sha256"]

    @property
    def weights_size(self) -> int | None:
        return self._data["weights"].get("size_bytes")

    @property
    def weights_url(self) -> str | None:
        return self._data["weights"].get("url")

    def _modality_text(self, which: str) -> str:
        modality = self._data[f"{which}_modality"]
        contrast = self._data.get(f"{which}_contrast")
        return f"{modality} ({contrast})" if contrast else modality

    def summary(self) -> str:
        """One short line for ``medtranslate models list``."""
        return (f"{self.id} {self.version}: {self._modality_text('source')} -> {self._modality_text('target')}, "
                f"{self.anatomy}, {self.family} {self.dimensionality} - {self.title}")

    def describe(self) -> str:
        """Multi-line Markdown description for ``medtranslate models show`` and the package README."""
        d = self._data
        training, metrics = d["training"], d["metrics"]
        lines = [
            f"# {self.title}",
            "",
            f"**{self.id}** version {self.version}. SYNTHETIC images: research use only, NOT FOR CLINICAL USE.",
            "",
        ]
        if d.get("description"):
            lines += [d["description"], ""]
        lines += [
            f"- Translation: {self._modality_text('source')} -> {self._modality_text('target')}",
            f"- Anatomy: {self.anatomy}; field of view: {self.field_of_view}",
            f"- Family: {self.family}, {self.dimensionality} "
            f"(in {self.in_channels} / out {self.out_channels} channels)",
            f"- Input: spacing {_fmt(d['input']['spacing']) + ' mm' if d['input'].get('spacing') else 'native'}, "
            f"slice axis {d['input']['slice_axis']}, orientation {d['input'].get('orientation') or 'as input, axes in L-R, A-P, S-I order'}",
            f"- Normalisation: input {_fmt(d['normalization']['input'])}; output {_fmt(d['normalization']['output'])}",
            "",
            "## Training",
            f"- Data: {training['data']}",
            f"- Split: {_split_text(training['split'])}",
        ]
        for key in ("epochs", "steps", "seconds", "device", "date", "software"):
            if key in training:
                lines.append(f"- {key.capitalize()}: {_fmt(training[key])}")
        lines += [f"- Warning: {warning}" for warning in training.get("warnings") or ()]  # what the run said
        lines += ["", "## Held-out metrics", f"- Measured on: {metrics['data']}"]
        if metrics.get("definitions"):
            lines.append(f"- Definitions: {metrics['definitions']}")
        values = metrics.get("values") or {}
        lines += [f"- {name}: {'n/a' if value is None else _fmt(value)}" for name, value in values.items()]
        if not values:
            lines.append("- (no metrics recorded)")
        if d.get("performance"):
            lines += ["", "## Performance"] + [f"- {k}: {_fmt(v)}" for k, v in d["performance"].items()]
        lines += [
            "", "## Use",
            f"- Intended use: {d['intended_use']}",
            f"- Limitations: {d['limitations']}",
            "- Not for clinical use: outputs are synthetic and must not be used for diagnosis or treatment.",
            "", "## Licence and citation",
            f"- Licence: {self.license}",
            f"- Citation: {d.get('citation') or '(none given)'}",
            f"- Weights: {self.weights_file} (SHA256 {self.weights_sha256})",
        ]
        return "\n".join(lines) + "\n"
