"""Where the database lives: `--db`, else `HYINF_DB`, else a SQLite file in the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_VAR = "HYINF_DB"


def existing_database(given: str | None = None) -> str | None:
    """The database to read plans and cost models from, if one was named or the default file exists
    (reading never creates the default database)."""
    if given or os.environ.get(ENV_VAR):
        return database_url(given)
    default = Path(platformdirs.user_data_dir("hyinf")) / "hyinf.db"
    return database_url(str(default)) if default.exists() else None


def database_url(given: str | None = None) -> str:
    """A SQLAlchemy URL; a plain file path means a SQLite file there."""
    url = given or os.environ.get(ENV_VAR)
    if not url:
        return f"sqlite:///{Path(platformdirs.user_data_dir('hyinf')) / 'hyinf.db'}"
    if "://" in url:
        return url
    return f"sqlite:///{Path(url).expanduser().resolve()}"
