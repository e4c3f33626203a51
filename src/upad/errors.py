"""Errors that reach users: each says what was wrong and what to do."""
from __future__ import annotations


class UpadError(Exception):
    """An error with a user-facing message and a hint on what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class TransientError(Exception):
    """A failure worth retrying (I/O hiccup, busy database, lost worker)."""


class DataError(Exception):
    """A deterministic failure caused by the input data: recorded, never retried."""
