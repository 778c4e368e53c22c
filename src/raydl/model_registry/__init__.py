"""The model registry: versions of named models with lineage, aliases (production, staging, any
name) moved atomically, and a history of every change.

    raydl.model_registry.db        the schema (SQLAlchemy Core) and the database: SQLite file or Postgres URL
    raydl.model_registry.lineage   what a model directory says about where it came from
    raydl.model_registry.api       `ModelRegistry`: register, list, show, promote, rollback, history, delete
    raydl.model_registry.cli       `raydl registry ...`

This module stays light (no SQLAlchemy): the CLI parser imports the package.
"""

from __future__ import annotations

from raydl.errors import RaydlError


class RegistryError(RaydlError):
    """A registry operation cannot be done as asked (unknown model or version, alias problems,
    a locked, corrupt or unreachable database)."""
