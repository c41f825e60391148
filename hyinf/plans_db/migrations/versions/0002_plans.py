"""Plans: one versioned JSON plan per (model structure, occlusion settings, device).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("settings_key", sa.String(64), nullable=False),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=True),
        sa.Column("cost_model_id", sa.Integer, sa.ForeignKey("cost_models.id"), nullable=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_plans_lookup", "plans", ["model_fingerprint", "settings_key", "device_id"])


def downgrade() -> None:
    op.drop_index("ix_plans_lookup", "plans")
    op.drop_table("plans")
