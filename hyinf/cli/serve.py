"""`hyinf serve`: run the plans service; `hyinf serve token ...`: its bearer tokens."""

from __future__ import annotations

import os

import click

from hyinf.cli import main
from hyinf.cli.common import DB_HELP, user_errors


@main.group(invoke_without_command=True)
@click.option("--db", "db_url", help=DB_HELP + " PostgreSQL for a fleet: postgresql+psycopg://USER@HOST/DB.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8750, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--public-read/--no-public-read", default=True, show_default=True,
              help="Whether reads need no token (writes always need a publish token).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Server processes.")
@click.pass_context
@user_errors
def serve(ctx: click.Context, db_url: str | None, host: str, port: int, public_read: bool, workers: int) -> None:
    """Serve plans and cost models over HTTP (JSON API under /v1, a page at /, OpenAPI at /openapi.json).

    Put TLS in front with a reverse proxy (docs/service.md). Example: hyinf serve --db team.db --port 8750
    """
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from hyinf.plans_db import Database
    from hyinf.service.app import DB_VAR, PUBLIC_VAR

    opened = Database(db_url)  # checked and migrated once here, before any worker starts
    url = opened.url
    # Closed before the workers open their own: with a second idle engine on the same SQLite file in
    # the process, the workers' reads stayed on an old snapshot (a token revoked by `hyinf serve token
    # revoke` went on working).
    opened.close()
    os.environ[DB_VAR], os.environ[PUBLIC_VAR] = url, "1" if public_read else "0"
    click.echo(f"hyinf serve: {url} on http://{host}:{port} ({'public' if public_read else 'token'} reads)", err=True)
    uvicorn.run("hyinf.service.app:from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning", timeout_graceful_shutdown=10)


@serve.group()
def token() -> None:
    """The service's bearer tokens (read, publish, admin)."""


@token.command("create")
@click.option("--role", type=click.Choice(["read", "publish", "admin"]), required=True, help="What the token may do.")
@click.option("--name", default="", help="Who holds it (default: the role).")
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def create(role: str, name: str, db_url: str | None) -> None:
    """Make a token; it is printed once, alone on the last line (only its hash is stored).

    Example: hyinf serve token create --role publish --name ci
    """
    from hyinf.plans_db import Database
    from hyinf.plans_db.tokens import create_token

    secret = create_token(Database(db_url), name or role, role)
    click.echo("the token (store it now: it cannot be shown again):", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def list_(db_url: str | None) -> None:
    """The tokens: id, name, role, created, revoked."""
    from hyinf.plans_db import Database
    from hyinf.plans_db.tokens import list_tokens

    for t in list_tokens(Database(db_url)):
        revoked = f", revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else ""
        click.echo(f"{t.id}\t{t.name}\t{t.role}\tcreated {t.created_at:%Y-%m-%d %H:%M}{revoked}")


@token.command("revoke")
@click.argument("token_id", type=int)
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def revoke(token_id: int, db_url: str | None) -> None:
    """Revoke token TOKEN_ID (see `hyinf serve token list`)."""
    from hyinf.plans_db import Database
    from hyinf.plans_db.tokens import revoke_token

    if not revoke_token(Database(db_url), token_id):
        raise click.UsageError(f"there is no unrevoked token {token_id}; `hyinf serve token list` shows them")
    click.echo(f"revoked token {token_id}")
