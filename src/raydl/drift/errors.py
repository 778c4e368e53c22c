"""Typed errors of the drift package (all RaydlError: the CLI prints one line, exit 2)."""

from __future__ import annotations

from raydl.errors import DataError, RaydlError


class DriftError(RaydlError):
    """A drift check cannot run as asked (bad option, model/profile mismatch)."""


class ProfileError(RaydlError):
    """A reference profile file is missing, corrupt, or of an unsupported version."""


__all__ = ["DataError", "DriftError", "ProfileError"]
