"""``medtranslate models list | show | import | remove | folder``."""

from __future__ import annotations

import argparse
import json
import re
import sys

#: Terminal control characters and bidirectional overrides a foreign card could use to disguise its text.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with terminal control characters and bidi overrides shown as U+FFFD."""
    return _UNSAFE.sub("\ufffd", text)


def run_models(args: argparse.Namespace) -> int:
    """``medtranslate models list|show|import|remove|folder``; returns the exit code."""
    from MedTranslateLib.models.registry import ModelRegistry

    registry = ModelRegistry()
    if args.models_command == "list":
        entries = registry.list_models()
        if args.json:  # the problems too: a package that stopped passing must not just disappear from the panel
            print(json.dumps({"models": [_entry_json(registry, e) for e in entries],
                              "problems": [p.to_json() for p in registry.problems]}, indent=1))
            return 0
        from rich.table import Table

        from MedTranslateLib.progress import rich_console

        table = Table(title="MedTranslate models")
        for column in ("id", "version", "source -> target", "family", "dims", "where"):
            table.add_column(column, no_wrap=column == "id")  # ids are typed: never cut them
        from MedTranslateLib.models.package import open_package

        for e in entries:
            card = open_package(e.path).card
            table.add_row(card.id, card.version, f"{card.source_modality} -> {card.target_modality}",
                          card.family, card.dimensionality, e.source)
        console = rich_console()
        console.width = max(console.width, 100)
        console.print(table)
        print(f"your model folder: {registry.user_dir}")
        for problem in registry.problems:
            print(f"warning: {printable(str(problem))}")
        return 0
    if args.models_command == "show":
        card = registry.resolve(args.model).card
        for warning in registry.warnings:  # a newer package of that id that cannot be read
            print(f"warning: {printable(warning)}", file=sys.stderr)
        print(json.dumps(card.to_dict(), indent=1) if args.json else printable(card.describe()))
        return 0
    if args.models_command == "import":
        from MedTranslateLib.families import load_networks
        from MedTranslateLib.models.registry import open_import_source

        package = open_import_source(args.file)
        if package.has_weights():  # weights that do not fit the card's network are refused before installing
            load_networks(package)
        entry = registry.import_package(args.file, overwrite=args.overwrite)
        print(f"imported {entry.id} {entry.version} into {entry.path}")
        note = registry.selection_note(entry)
        if note:
            print(f"note: {note}")
        return 0
    if args.models_command == "remove":
        for path in registry.remove(args.model):  # an id alone removes every imported version: say which
            print(f"removed {path.name} ({path})")
        return 0
    if args.models_command == "folder":
        print(registry.user_dir)
        return 0
    return 2


def _entry_json(registry, entry) -> dict:
    from MedTranslateLib.models.package import open_package

    card = open_package(entry.path).card.to_dict()
    keys = ("id", "version", "title", "source_modality", "target_modality", "anatomy", "field_of_view",
            "family", "dimensionality", "license", "performance", "intended_use", "limitations", "metrics",
            "sample_data", "normalization")
    return {**{k: card.get(k) for k in keys}, "source": entry.source, "path": str(entry.path)}
