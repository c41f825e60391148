"""The plans database. `Database` and `DatabaseError` load SQLAlchemy and Alembic on first use, so
reading where the database is (`location`) costs nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyinf.plans_db.store import Database, DatabaseError

__all__ = ["Database", "DatabaseError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hyinf.plans_db import store

        return getattr(store, name)
    raise AttributeError(f"module 'hyinf.plans_db' has no attribute {name!r}")
