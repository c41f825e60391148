"""The plans database (SQLAlchemy; SQLite by default): devices, profiles, cost models and plans."""

from hyinf.plans_db.store import Database, DatabaseError

__all__ = ["Database", "DatabaseError"]
