"""Who may do what: bearer tokens with the roles read, publish and admin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from hyinf.plans_db.tokens import Holder, holder

ANONYMOUS = Holder("", "read")


def require(role: str) -> Callable[[Request], Awaitable[Holder]]:
    """A dependency admitting requests whose token allows `role`; reads without a token where the
    server was started with public reads (on the event loop: no thread, no query)."""

    async def check(request: Request) -> Holder:
        header = request.headers.get("authorization", "")
        if not header:
            if role == "read" and request.app.state.public_read:
                return ANONYMOUS
            raise HTTPException(401, f"this needs a token with the {role} role (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})
        scheme, _, secret = header.partition(" ")
        found = await run_in_threadpool(holder, request.app.state.db, secret.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise HTTPException(401, "the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
        if not found.allows(role):
            raise HTTPException(403, f"token {found.name!r} has the {found.role} role; this needs {role}")
        return found

    return check
