"""Devices, profiling runs, raw measurements and fitted cost models.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("driver", sa.String(64), nullable=False),
        sa.Column("torch_version", sa.String(64), nullable=False),
        sa.Column("onnxruntime_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "profile_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("threads", sa.Integer, nullable=False),
        sa.Column("quick", sa.Boolean, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("hyinf_version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("profile_runs.id"), nullable=False, index=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("config", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("op", sa.String(32), nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("median_s", sa.Double, nullable=False),
        sa.Column("spread", sa.Double, nullable=False),
        sa.Column("times", sa.JSON, nullable=False),
    )
    op.create_table(
        "cost_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False, index=True),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("format_version", sa.Integer, nullable=False),
        sa.Column("run_ids", sa.JSON, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("cost_models", "measurements", "profile_runs", "devices"):
        op.drop_table(table)
