"""Errors caused by what a user gave (files, settings); the CLI shows their message as one line."""

from __future__ import annotations


class SscError(Exception):
    """A problem with user input; the message names the file (or setting) and the problem."""


class ScanError(SscError):
    """A scan or image that cannot be read or is not usable as a chest CT."""


class CohortError(SscError):
    """A cohort folder that fails validation; `problems` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the cohort:"
        super().__init__("\n".join([head, *("  " + p for p in self.problems)]))


class ModelError(SscError):
    """Weights, checkpoints or runs that do not fit what was asked for."""


class ConfigError(SscError):
    """A preset or setting that does not exist or is out of range."""
