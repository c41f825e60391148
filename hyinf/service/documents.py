"""Plan documents served by id, kept by the process that serves them.

Plans are immutable, so a document's canonical bytes and digest never change: they are kept (the
newest `size` of them) and a lookup by id costs no database query. Whether a plan was retracted
can change: `sweep` reads it for every kept plan in one query, every `ttl` seconds (the app runs it
in the background), so a retraction reaches every server process within about that time. Entries
not confirmed for twice that long (a database that stopped answering) are read again on lookup.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from hyinf.canonical import canonical_json
from hyinf.plans_db import catalog
from hyinf.plans_db.store import Database

TTL_S = 1.0


@dataclass(frozen=True)
class Served:
    digest: str
    body: bytes  # canonical JSON
    retracted: bool
    read_at: float


class Documents:
    def __init__(self, db: Database, size: int = 4096, ttl: float = TTL_S) -> None:
        self.db, self.size, self.ttl = db, size, ttl
        self.kept: OrderedDict[int, Served] = OrderedDict()

    def fresh(self, plan_id: int) -> Served | None:
        """The kept entry while it was confirmed recently (no I/O: safe on the event loop)."""
        entry = self.kept.get(plan_id)
        return entry if entry is not None and time.monotonic() - entry.read_at < 2 * self.ttl else None

    def sweep(self) -> None:
        """Read whether each kept plan is retracted, in one query, and mark them all confirmed."""
        ids = list(self.kept)
        if not ids:
            return
        now = time.monotonic()
        retracted = catalog.retracted_among(self.db, ids)
        for plan_id in ids:
            entry = self.kept.get(plan_id)
            if entry is not None:
                self.kept[plan_id] = Served(entry.digest, entry.body, plan_id in retracted, now)

    def load(self, plan_id: int) -> Served | None:
        """The entry read from the database (None: no such plan); the body is encoded once per plan."""
        old = self.kept.get(plan_id)
        retracted = catalog.plan_state(self.db, plan_id) if old is not None else None
        if old is not None and retracted is not None:
            entry = Served(old.digest, old.body, retracted, time.monotonic())
        else:
            row = catalog.plan(self.db, plan_id)
            if row is None:
                return None
            entry = Served(row[0].digest, canonical_json(row[0].body), row[0].retracted_at is not None, time.monotonic())
        self.kept[plan_id] = entry
        self.kept.move_to_end(plan_id)
        while len(self.kept) > self.size:
            self.kept.popitem(last=False)
        return entry

    def forget(self, plan_id: int) -> None:
        """Drop a plan this process retracted: its next lookup reads the database."""
        self.kept.pop(plan_id, None)


_PLAN_PATH = re.compile(r"/v1/plans/([1-9][0-9]{0,9})")


class KeptPlans:
    """ASGI middleware answering anonymous `GET /v1/plans/{id}` for a kept, fresh, unretracted plan
    straight from `documents`, without routing, dependencies or a thread: lookups by id are what a
    fleet sends most. Everything else (tokens, misses, stale entries) goes on to the app, which
    answers the same way."""

    def __init__(self, app: Any, documents: Documents, public_read: bool) -> None:
        self.app, self.documents, self.public_read = app, documents, public_read

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.public_read and scope["type"] == "http" and scope["method"] == "GET":
            match = _PLAN_PATH.fullmatch(scope["path"])
            headers = dict(scope.get("headers", []))
            if match and b"authorization" not in headers:
                entry = self.documents.fresh(int(match[1]))
                if entry is not None and not entry.retracted:
                    tag = f'"{entry.digest}"'.encode()
                    unchanged = headers.get(b"if-none-match") == tag
                    body = b"" if unchanged else entry.body
                    answer = [(b"etag", tag), (b"content-length", str(len(body)).encode())]
                    if not unchanged:
                        answer.append((b"content-type", b"application/json"))
                    await send({"type": "http.response.start", "status": 304 if unchanged else 200, "headers": answer})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
