"""Alembic environment: hyinf always runs migrations on a connection it opened itself."""

from alembic import context

from hyinf.plans_db.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
