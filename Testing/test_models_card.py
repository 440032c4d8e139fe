"""Model cards: validation with field paths, JSON errors naming the file, properties and text."""

from __future__ import annotations

import json

import pytest

from MedTranslateLib.errors import ModelError
from MedTranslateLib.models.card import ModelCard, load_card, validate_card
from packages import make_test_card


def test_valid_card_properties():
    card = validate_card(make_test_card(dimensionality="2.5d", architecture={"in_channels": 3}))
    assert isinstance(card, ModelCard)
    assert (card.id, card.version, card.family) == ("test-mr-to-ct", "0.1.0", "unet")
    assert card.spatial_dims == 2 and card.in_channels == 3 and card.out_channels == 1
    assert validate_card(make_test_card(dimensionality="3d")).spatial_dims == 3
    assert (card.source_modality, card.target_modality) == ("MR", "CT")


def test_to_dict_is_a_copy():
    card = validate_card(make_test_card())
    data = card.to_dict()
    data["input"]["slice_axis"] = "coronal"
    assert card.to_dict()["input"]["slice_axis"] == "axial"


def test_summary_and_describe_mention_the_essentials():
    card = validate_card(make_test_card(metrics={"data": "held-out test subjects 1BA001", "values": {"mae_hu": 61.5}},
                                        source_contrast="T1"))
    assert "MR (T1) -> CT" in card.summary() and "test-mr-to-ct" in card.summary()
    text = card.describe()
    for expected in ("pelvis", "whole pelvis", "unet", "2d", "synthetic phantoms", "held-out test subjects 1BA001",
                     "mae_hu: 61.5", "Apache-2.0", "MedTranslate tests.", "Intended use", "Limitations",
                     "NOT FOR CLINICAL USE"):
        assert expected in text, expected


def test_describe_shows_what_the_training_run_warned_about():
    """A card's ``training.warnings`` (cases skipped for a missing file, targets resampled, ...) were kept in
    model.json but left out of ``models show`` and the package README."""
    skipped = "1 of 4 cases in BraTS2023 skipped: AURORA-example (no t2w)."
    card = validate_card(make_test_card(training={"data": "BraTS2023 (brats2023 layout)", "split": {"train": ["a"]},
                                                  "warnings": [skipped]}))
    assert f"- Warning: {skipped}" in card.describe()
    assert "Warning" not in validate_card(make_test_card()).describe()


def test_schema_error_names_the_field_path_and_expected_values():
    bad = make_test_card()
    bad["normalization"]["input"]["method"] = "minmax"
    with pytest.raises(ModelError) as info:
        validate_card(bad, source="pkg/model.json")
    message = str(info.value)
    assert "pkg/model.json" in message
    assert "normalization.input.method" in message
    assert "zscore" in message


def test_missing_field_and_several_errors_are_one_error():
    bad = make_test_card()
    del bad["license"]
    bad["weights"]["sha256"] = "not-a-hash"
    with pytest.raises(ModelError) as info:
        validate_card(bad, source="m.json")
    message = str(info.value)
    assert "license" in message and "weights.sha256" in message


def test_clinical_use_true_is_refused():
    with pytest.raises(ModelError, match="clinical_use"):
        validate_card(make_test_card(clinical_use=True))


def test_load_card_json_syntax_error_names_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"id": "x",,}')
    with pytest.raises(ModelError) as info:
        load_card(path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


def test_load_card_from_folder_and_missing(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(make_test_card()))
    assert load_card(tmp_path).id == "test-mr-to-ct"
    with pytest.raises(ModelError, match="No model card"):
        load_card(tmp_path / "nothing")


def test_oversized_card_refused(tmp_path, monkeypatch):
    import MedTranslateLib.models.card as card_module

    monkeypatch.setattr(card_module, "MAX_CARD_BYTES", 100)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(make_test_card()))
    with pytest.raises(ModelError, match="more than the 100"):
        load_card(path)


@pytest.mark.parametrize("spacing", [[2.0, 2.0, 1e-9], [0.0, 1.0, 1.0], [1.0, 1000.0, 1.0]])
def test_implausible_model_spacing_is_refused(spacing):
    """A spacing that would resample a volume to billions of voxels (or to nothing) is refused at load time."""
    card = make_test_card()
    card["input"]["spacing"] = spacing
    with pytest.raises(ModelError, match="input.spacing"):
        validate_card(card)


@pytest.mark.parametrize("role, spec, message", [
    ("input", {"method": "clip"}, "normalization.input: The clip normalisation spec needs 'range'"),
    ("input", {"method": "clip", "range": [3071, -1024]}, "normalization.input: Normalisation range .* reversed"),
    ("input", {"method": "percentile", "percentiles": [99.5, 0.5]}, "percentiles .* reversed"),
    ("output", {"method": "percentile", "percentiles": [0.5, 99.5]}, "normalization.output: .* has no output_range"),
    ("output", {"method": "zscore", "output_range": [5, 5]}, "output_range .* empty or reversed"),
])
def test_a_normalisation_that_could_never_translate_is_refused_with_the_card(role, spec, message):
    """Such a card passed the schema and import, and failed only at the first translation."""
    card = make_test_card()
    card["normalization"][role] = spec
    with pytest.raises(ModelError, match=message):
        validate_card(card, source="x/model.json")


def test_a_card_body_mask_typo_is_refused_like_in_training():
    """The card's body_mask settings follow the same rules as a training config's (one check, in body_mask.py)."""
    card = make_test_card()
    card["body_mask"] = {"dilate": 8.0}
    with pytest.raises(ModelError, match="body_mask: Unknown body_mask setting 'dilate'"):
        validate_card(card, source="x/model.json")


def test_a_z_slab_split_reads_as_slice_ranges():
    from MedTranslateLib.models.card import _split_text

    text = _split_text({"method": "z-slab", "gap": 4, "train": [0, 60], "val": None, "test": [64, 86]})
    assert "train slices 0-59" in text and "test slices 64-85" in text and " x " not in text and "val" not in text


@pytest.mark.parametrize("key, value, message", [
    ("residual", "false", r"architecture.residual must be true or false \(without quotes\), not 'false'"),
    ("features", "8,16,32,64", r"architecture.features must be a list of positive whole numbers"),
    ("features", [[8], 16], r"architecture.features must be a list"),
    ("dropout", "none", r"architecture.dropout must be a number from 0 to below 1"),
    ("output_activation", 1, r"architecture.output_activation must be a text, not 1"),
    ("num_head_channels", [32, 32], r"architecture.num_head_channels must be a positive whole number"),
])
def test_an_architecture_value_of_the_wrong_type_is_refused_with_the_card(key, value, message):
    """A string "false" counted as true built another network than the weights were trained as, silently."""
    with pytest.raises(ModelError, match=message):
        validate_card(make_test_card(architecture={key: value}))


def test_a_card_from_a_windows_editor_or_powershell_reads(tmp_path):
    card = make_test_card()
    card["weights"]["sha256"] = card["weights"]["sha256"].upper()  # Get-FileHash prints upper case
    path = tmp_path / "model.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(card).encode("utf-8"))  # Notepad's byte-order mark
    assert load_card(path).weights_sha256 == card["weights"]["sha256"].lower()


def test_non_finite_numbers_and_newer_card_formats_are_one_clear_error(tmp_path):
    path = tmp_path / "model.json"
    text = json.dumps(make_test_card())
    path.write_text(text.replace('"spacing": null', '"spacing": [NaN, 1, 1]').replace(
        '"schema_version": 1', '"schema_version": 1, "x": Infinity'), encoding="utf-8")
    with pytest.raises(ModelError, match="holds (NaN|Infinity), which is not a number"):
        load_card(path)
    with pytest.raises(ModelError, match=r"made by a newer MedTranslate \(card format 2; this version reads format 1"):
        validate_card({**make_test_card(), "schema_version": 2, "provenance": {}})


def test_a_card_whose_network_cannot_be_built_is_a_model_error(tmp_path):
    from MedTranslateLib.families import load_networks
    from MedTranslateLib.models.package import open_package
    from packages import make_untrained_package

    package = make_untrained_package(tmp_path / "pkg", "diffusion", "2d")
    card = json.loads((package / "model.json").read_text(encoding="utf-8"))
    card["architecture"]["norm_num_groups"] = 7  # channels not divisible: the network cannot be built
    (package / "model.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError, match="does not describe a diffusion network that can be built"):
        load_networks(open_package(package))


def test_a_folder_named_model_json_is_reported_once(tmp_path):
    (tmp_path / "pkg" / "model.json").mkdir(parents=True)
    with pytest.raises(ModelError) as caught:
        load_card(tmp_path / "pkg")
    assert "model.json/model.json" not in str(caught.value) and "Cannot read the model card" in str(caught.value)


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"id": ' + b"{\"a\": " * 50_000 + b"1" + b"}" * 50_001])
def test_a_deeply_nested_card_is_refused_not_a_recursion_traceback(tmp_path, raw):
    """A damaged or hostile model.json nested 100,000 deep (200 kB, under the size cap) raised RecursionError out
    of 'models import', 'show', translate, and 'models list' (one such package in the model folder broke the
    whole listing and the Slicer panel's)."""
    from MedTranslateLib.models.card import parse_card_bytes
    from MedTranslateLib.models.registry import ModelRegistry
    from test_models_util import make_package

    with pytest.raises(ModelError, match="nested too deeply"):
        parse_card_bytes(raw, source="deep/model.json")
    user = tmp_path / "user"
    folder = make_package(user / "deep@1.0.0", id="deep", version="1.0.0")
    (folder / "model.json").write_bytes(raw)
    registry = ModelRegistry(builtin_dir=tmp_path / "none", user_dir=user)
    assert registry.list_models() == []
    assert [p.path for p in registry.problems] == [folder] and "nested too deeply" in registry.problems[0].problem
    with pytest.raises(ModelError, match="cannot be read: .*nested too deeply"):
        registry.resolve("deep")
