"""The registry: device classes, digests and provenance of plans and cost models, retraction, and
the service's bearer tokens (stored as hashes).

Plans and cost models are named by the sha256 digest of their canonical JSON; a document stored
twice is one row (the oldest is kept: copies are identical).

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

from hyinf.canonical import digest

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

def _provenance() -> list[sa.Column]:
    return [
        sa.Column("digest", sa.String(64), nullable=True),  # filled below, then required
        sa.Column("publisher", sa.String(100), nullable=False, server_default=""),
        sa.Column("machine", sa.String(200), nullable=False, server_default=""),
        sa.Column("hyinf_version", sa.String(32), nullable=False, server_default=""),
        sa.Column("retracted_at", sa.DateTime, nullable=True),
    ]


def _fill_digests(conn: sa.Connection, table: str) -> None:
    rows = conn.execute(sa.text(f"SELECT id, body FROM {table} ORDER BY id")).all()
    seen: set[str] = set()
    for row_id, body in rows:
        value = digest(body if isinstance(body, (dict, list)) else json.loads(body))  # SQLite gives text, psycopg a dict
        if value in seen:  # an identical copy of an older row
            conn.execute(sa.text(f"DELETE FROM {table} WHERE id = :id"), {"id": row_id})
            continue
        seen.add(value)
        conn.execute(sa.text(f"UPDATE {table} SET digest = :d WHERE id = :id"), {"d": value, "id": row_id})


def upgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("measurements") as batch:  # 32 characters were too few; PostgreSQL refused longer names
        batch.alter_column("op", existing_type=sa.String(32), type_=sa.String(64), existing_nullable=False)
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("device_class", sa.String(220), nullable=False, server_default=""))
    conn.execute(sa.text("UPDATE devices SET device_class = kind || ':' || name"))
    op.create_index("ix_devices_device_class", "devices", ["device_class"])
    for table in ("plans", "cost_models"):
        with op.batch_alter_table(table) as batch:
            for column in _provenance():
                batch.add_column(column)
        _fill_digests(conn, table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("digest", existing_type=sa.String(64), nullable=False)
        op.create_index(f"ix_{table}_digest", table, ["digest"], unique=True)
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tokens")
    for table in ("plans", "cost_models"):
        op.drop_index(f"ix_{table}_digest", table)
        with op.batch_alter_table(table) as batch:
            for column in _provenance():
                batch.drop_column(column.name)
    op.drop_index("ix_devices_device_class", "devices")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("device_class")
