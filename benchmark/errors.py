"""Errors a user can act on.

Every exception that the CLI turns into a one-line message (no traceback, non-zero exit) derives from
:class:`UserError`. Its message says what was wrong and ``fix`` says what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix: bad name, missing file, no weights, unwritable folder."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class UnknownNameError(UserError, KeyError):
    """A name (method, model, dataset, config key) that is not registered."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], fix: str | None = None) -> None:
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        message = f"Unknown {kind} {name!r}.{hint} Valid: {', '.join(valid) if valid else '(none)'}."
        super().__init__(message, fix)
        self.kind, self.name, self.valid, self.close = kind, name, valid, close

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return UserError.__str__(self)


class WeightsNotFoundError(UserError):
    """Pretrained weights are not on disk and cannot be downloaded here."""
