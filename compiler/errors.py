"""Errors lgc reports to its users: one line each, with a distinct exit code per kind.

The CLI prints ``lgc: error: <message>`` and exits with ``exit_code``; a raw
traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class LgcError(Exception):
    """Base of every error lgc reports as one line."""

    exit_code = 5

    def __init__(self, message: str = ""):
        # One line, whatever a user put into a name or value the message quotes.
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class QualityGateError(LgcError):
    """A quality, size or latency check failed (``lgc check``)."""

    exit_code = 1


class UsageError(LgcError):
    """Bad command-line input: unknown target or pass, invalid option, bad bundle or policy."""

    exit_code = 2


class ModelInputError(LgcError):
    """The model folder is missing, is not a diffusers pipeline, or its files are broken."""

    exit_code = 3


class UnsupportedModelError(LgcError):
    """A well-formed model that uses a block, class or option lgc cannot compile."""

    exit_code = 4


class BuildError(LgcError):
    """A pass, a lowering step or the bundle writer failed."""

    exit_code = 5


class PassError(BuildError):
    """A pass failed or left an invalid program; names the pass and the passes before it."""

    def __init__(self, pass_name: str, before: list[str], reason: str):
        chain = " -> ".join(before) if before else "(none)"
        super().__init__(f"pass '{pass_name}' failed: {reason} (after passes: {chain})")
        self.pass_name = pass_name
