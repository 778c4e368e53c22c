"""One small hierarchy of typed errors. The CLI turns any RaydlError into one line and exit 2."""

from __future__ import annotations


class RaydlError(Exception):
    """Base for errors a user can fix (bad spec, bad data, not enough resources)."""

    exit_code = 2


class SpecError(RaydlError):
    """The job spec is malformed or invalid; the message lists every problem with its path."""


class DataError(RaydlError):
    """The data cannot be used as the spec says (missing path, missing column, NaN, ...)."""


class ResourceError(RaydlError):
    """The cluster cannot give what the spec asks for."""


class TrainingDiverged(RaydlError):
    """The loss or the gradients became NaN or infinite."""


class UnknownNameError(RaydlError):
    """A registry was asked for a name it does not hold."""


class OutputError(RaydlError):
    """An output path cannot be written (a directory, under a file, read-only, not creatable)."""


class AuthError(RaydlError):
    """A cluster or API server refused who we are: a missing or wrong token, or no permission (403)."""


class NotFoundError(RaydlError):
    """A named thing (a job, a kubeconfig context, a namespace) does not exist where it was looked for."""
