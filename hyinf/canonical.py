"""Canonical JSON: one byte string per document, so its sha256 digest names it wherever it travels."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(body: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal documents give equal bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest(body: Any) -> str:
    """The sha256 of the document's canonical JSON, in hex."""
    return hashlib.sha256(canonical_json(body)).hexdigest()
