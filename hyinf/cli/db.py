"""`hyinf db`: the plans database."""

from __future__ import annotations

import click

from hyinf.cli import main
from hyinf.cli.common import DB_HELP, user_errors


@main.group()
def db() -> None:
    """The plans database (profiles, cost models, plans)."""


@db.command()
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def info(db_url: str | None) -> None:
    """Where the database is and what it holds.

    Example: hyinf db info --db team-plans.db
    """
    from hyinf.plans_db import Database

    summary = Database(db_url).summary()
    click.echo(f"database: {summary.url} (schema revision {summary.revision})")
    click.echo("holds: " + ", ".join(f"{n} {label}" for label, n in summary.counts.items()))
    for device_id, _kind, description in summary.devices:
        click.echo(f"device {device_id}: {description}")
    for model_id, device_id, backend, created, metrics in summary.cost_models:
        learned, analytic = metrics.get("learned", {}), metrics.get("analytic", {})
        click.echo(f"cost model {model_id}: device {device_id}, {backend}, {created:%Y-%m-%d %H:%M}; held-out error "
                   f"{learned.get('mape', float('nan')):.1%} (analytic {analytic.get('mape', float('nan')):.1%})")
