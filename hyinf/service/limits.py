"""Request bodies over the service's limit are refused before they are read into memory."""

from __future__ import annotations

import json
from typing import Any

MAX_BODY = 64 * 2**20


class BodyLimit:
    """ASGI middleware answering 413 (with a JSON body) to requests whose body exceeds `limit` bytes,
    by their Content-Length or, for chunked bodies, as soon as they have sent more."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send)
            return
        seen, over, answered = 0, False, False

        async def counted() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def replaced(message: dict[str, Any]) -> None:
            """The app's answer, or 413 in its place once the body went over (the app may have caught
            the error and answered 400 itself)."""
            nonlocal answered
            if not over:
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True
                await self._refuse(send)

        try:
            await self.app(scope, counted, replaced)
        except _TooLarge:
            if not answered:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": f"the request body is over the service's limit of {self.limit // 2**20} MiB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
