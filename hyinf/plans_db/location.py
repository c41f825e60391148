"""Where the database lives: `--db`, else `HYINF_DB`, else a SQLite file in the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_VAR = "HYINF_DB"


def existing_database(given: str | None = None) -> str | None:
    """The database to read plans and cost models from, if one was named (a SQLite file only if it
    exists) or the default file exists: reading never creates a database (opening one takes half a
    second of imports and migrations, for nothing to read)."""
    named = given or os.environ.get(ENV_VAR)
    if named:
        url = database_url(given)
        local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        return url if local is None or Path(local).exists() else None
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
