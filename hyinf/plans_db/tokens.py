"""Bearer tokens of the plans service: created once (the secret is shown then, and only its sha256
is stored), listed, revoked. A token of 256 random bits needs no slow hash: nothing can be guessed."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from hyinf.errors import SettingsError
from hyinf.plans_db.schema import Token
from hyinf.plans_db.store import Database

ROLES = ("read", "publish", "admin")  # each allows what the ones before it do
PREFIX = "hyinf_"


@dataclass(frozen=True)
class Holder:
    """Who a valid token belongs to."""

    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(db: Database, name: str, role: str) -> str:
    """A new token's secret (shown once: only its hash is kept)."""
    if role not in ROLES:
        raise SettingsError(f"a token's role is one of {', '.join(ROLES)}, not {role!r}")
    if not 0 < len(name) <= 100:
        raise SettingsError("a token's name takes 1 to 100 characters")
    secret = PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(Token(name=name, role=role, hash=_hash(secret)))
    return secret


def list_tokens(db: Database) -> list[Token]:
    with db.session() as s:
        return list(s.scalars(select(Token).order_by(Token.id)))


def revoke_token(db: Database, token_id: int) -> bool:
    """Revoke token `token_id`; False when there is no such token or it was revoked before."""
    with db.session() as s:
        row = s.get(Token, token_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = datetime.now(UTC).replace(tzinfo=None)
        return True


def holder(db: Database, secret: str) -> Holder | None:
    """The holder of a valid, unrevoked token; None for anything else."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    with db.reading() as s:
        row = s.scalar(select(Token).where(Token.hash == _hash(secret), Token.revoked_at.is_(None)))
        return Holder(row.name, row.role) if row is not None else None
