"""User-facing errors: each says what was wrong and what to do, and maps to an exit code."""

from __future__ import annotations


def plain_numbers(values: object, spec: str = ".5g") -> str:
    """``(1, 0.5, -2.25)``: numbers for a message, without numpy reprs like ``np.float64(1.0)``."""
    return "(" + ", ".join(format(float(v), spec) for v in values) + ")"  # type: ignore[attr-defined]


class MedTranslateError(Exception):
    """An error a user can act on. ``problem`` says what was wrong, ``fix`` what to do."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip()
        self.fix = fix.rstrip()
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} {self.fix}".strip()


class InputError(MedTranslateError):
    """The input volume (or mask) cannot be used."""

    exit_code = 3


class ModelError(MedTranslateError):
    """A model package is unknown, corrupt, unsafe or does not match its card."""

    exit_code = 4


class OutputError(MedTranslateError):
    """The output cannot be written where asked."""

    exit_code = 5


class ConfigError(MedTranslateError):
    """A training, evaluation or command-line configuration is invalid."""

    exit_code = 6


class DeviceError(MedTranslateError):
    """The requested compute device is not available."""

    exit_code = 7


class Cancelled(MedTranslateError):
    """The user cancelled the work; nothing was written."""

    exit_code = 130

    def __init__(self, problem: str = "Cancelled by the user; nothing was written.", fix: str = "") -> None:
        super().__init__(problem, fix)
