"""An ensemble of model packages translating together: the output is the members' mean on the input
grid, the uncertainty the per-voxel standard deviation across members."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from MedTranslateLib.errors import ModelError
from MedTranslateLib.families.base import InferenceOptions, derive_seed
from MedTranslateLib.pipeline import STAGES, TranslationResult, Translator
from MedTranslateLib.progress import ProgressEvent, ProgressTracker

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

    from MedTranslateLib.models.card import ModelCard
    from MedTranslateLib.models.package import ModelPackage


def _check_output_scales(cards: Sequence["ModelCard"]) -> None:
    """Members must write the same intensity scale: a CT model writes Hounsfield units, but an MR model writes its
    own ``output_range`` (say 0-1000), and the mean of a 0-1000 and a 0-1 model is neither."""
    def scale(card: "ModelCard") -> tuple | None:
        spec = card.to_dict()["normalization"]["output"]
        if str(spec.get("method", "clip")).lower() == "clip":  # physical units (HU)
            return None
        low_high = tuple(float(v) for v in spec.get("output_range") or ())
        background = spec.get("background")  # unstated: the value -1 maps to, the range's low end (restore_array)
        return low_high, float(background if background is not None else low_high[0])

    def describe(card: "ModelCard") -> str:
        own = scale(card)
        return f"{card.id} writes physical units" if own is None else \
            f"{card.id} writes {list(own[0])} (background {own[1]})"

    for card in cards[1:]:
        if scale(card) != scale(cards[0]):
            raise ModelError(f"Ensemble members write different intensity scales: {describe(cards[0])}, "
                             f"{describe(card)}; their mean would mix two scales.",
                             "Ensemble only models whose normalization.output has the same output_range and "
                             "background.")


def check_members(cards: Sequence["ModelCard"]) -> None:
    """Raise :class:`ModelError` unless the cards can form an ensemble: one source and target modality, one output
    scale, and no model twice (checked from the cards alone, before any network is built)."""
    first = cards[0]
    for card in cards[1:]:
        if (card.source_modality, card.target_modality) != (first.source_modality, first.target_modality):
            raise ModelError(
                f"Ensemble members translate different modalities: {first.id} is "
                f"{first.source_modality} -> {first.target_modality}, {card.id} is "
                f"{card.source_modality} -> {card.target_modality}.",
                "Ensemble only models of the same source and target modality.")
    _check_output_scales(cards)
    seen: set[tuple[str, str, str]] = set()
    for card in cards:
        key = (card.id, card.version, card.weights_sha256)
        if key in seen:
            raise ModelError(f"The ensemble's model {card.id}@{card.version} is given twice: the mean would count it "
                             "twice, and its spread would understate the uncertainty.",
                             "Give each model once; for several samples of one diffusion model use --samples K.")
        seen.add(key)


class EnsembleTranslator:
    """Several :class:`Translator` objects of the same source and target modality."""

    def __init__(self, models: Sequence["str | ModelPackage"], device: str = "auto") -> None:
        """``models``: ids, id@version, package paths, or packages already resolved."""
        from MedTranslateLib.models.package import ModelPackage
        from MedTranslateLib.models.registry import ModelRegistry

        registry = ModelRegistry()
        packages = [m if isinstance(m, ModelPackage) else registry.resolve(str(m)) for m in models]
        check_members([package.card for package in packages])
        self.members = [Translator(package, device=device) for package in packages]
        self.card = self.members[0].card
        self.device = self.members[0].device

    def translate(self, image: "sitk.Image", mask: "sitk.Image | None" = None,
                  options: InferenceOptions | None = None, tracker: ProgressTracker | None = None,
                  uncertainty: bool = False) -> TranslationResult:
        """Every member translates ``image``; the output is their mean, the uncertainty their spread."""
        import SimpleITK as sitk

        from MedTranslateLib.evaluation.uncertainty import RunningStats

        options = options or InferenceOptions()
        stats = RunningStats(spread=uncertainty)
        results = []
        for i, m in enumerate(self.members):
            # each member is seeded from (seed, member index): seed + i gave member 1 of --seed 0 the noise of
            # member 0 of --seed 1
            result = m.translate(image, mask, replace(options, seed=derive_seed(options.seed, i)),
                                 self._member_tracker(tracker, i), uncertainty=False)
            stats.add(sitk.GetArrayViewFromImage(result.output))
            results.append(replace(result, output=None))  # folded in: its provenance, warnings and stats stay
            del result  # frees the member's image before the next member runs
        mean_array, std_array = stats.result()
        mean = sitk.GetImageFromArray(mean_array)
        mean.CopyInformation(image)
        del mean_array
        std_image = None
        if std_array is not None:
            std_image = sitk.GetImageFromArray(std_array)
            std_image.CopyInformation(image)
        devices = dict.fromkeys(str(r.provenance.get("device", "")) for r in results)  # a member may fall back
        provenance = {**self.provenance(), "device": "+".join(devices)}
        warnings = sorted({w for r in results for w in r.warnings})
        seconds = {k: sum(r.seconds.get(k, 0.0) for r in results) for k in results[0].seconds}
        return TranslationResult(mean, std_image, warnings, provenance, seconds,
                                 {"members": [dict(r.stats) for r in results]})

    def _member_tracker(self, tracker: ProgressTracker | None, index: int) -> ProgressTracker | None:
        """A tracker for member ``index`` whose progress fills its share of ``tracker``'s translation stages
        (preprocess to restore), its messages naming the member: one shared tracker stopped at the first
        member's end, since progress never goes backwards."""
        if tracker is None:
            return None
        names = [name for name, _ in STAGES]
        total = sum(weight for _, weight in STAGES)
        start = sum(weight for _, weight in STAGES[:names.index("preprocess")]) / total
        end = sum(weight for _, weight in STAGES[:names.index("write")]) / total
        count, card = len(self.members), self.members[index].card

        def relay(event: ProgressEvent) -> None:
            own = min(max((event.fraction - start) / (end - start), 0.0), 1.0)
            tracker.report_at(start + (end - start) * (index + own) / count, event.stage, event.stage_fraction,
                              f"model {index + 1}/{count} ({card.id}): {event.message}".rstrip(": "))

        return ProgressTracker(STAGES, relay, tracker.cancel_token)

    def provenance(self) -> dict:
        """The members' provenance in one: ids, versions and checksums of every member, in order, joined with
        "+" (ids, versions) and "," (checksums), so a file's header names the whole ensemble, not its first model."""
        each = [member.provenance() for member in self.members]
        joined = {key: separator.join(str(p.get(key, "")) for p in each)
                  for key, separator in (("model_id", "+"), ("model_version", "+"), ("model_sha256", ","))}
        families = dict.fromkeys(str(p.get("model_family", "")) for p in each)
        return {**each[0], **joined, "model_family": "+".join(families),
                "ensemble": ",".join(f"{m.card.id}@{m.card.version}" for m in self.members)}
