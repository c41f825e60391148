"""The client of a plans service (`hyinf serve`): fetch plans for this machine, publish plans and
profile runs, push and pull stored plans.

Lookups during an explanation never cost the explanation: a registry that is down, slow (a 2 s
timeout at most) or answers nonsense costs one warning, and the run plans locally. Every downloaded
document's sha256 digest is checked against the one the server names. Explicit operations (publish,
push, pull) fail with one clear line instead.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from hyinf.canonical import digest
from hyinf.errors import HyinfError, PlanError

URL_VAR, TOKEN_VAR = "HYINF_REGISTRY", "HYINF_TOKEN"
LOOKUP_TIMEOUT_S = 2.0


class RegistryError(HyinfError):
    """The plans service refused or could not be reached for an explicit operation."""


class RegistryWarning(UserWarning):
    """A lookup in the plans service failed; the run went on without it."""


@dataclass(frozen=True)
class Fetched:
    """A plan the registry had for this machine."""

    document: Any  # PlanDocument
    plan_id: int
    match: str  # exact | class
    differs: list[str]  # for a class match: the device fields that differ


class Registry:
    """A plans service at `url`, with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = LOOKUP_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise RegistryError(f"the registry must be an http:// or https:// URL, not {url!r}")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    @classmethod
    def from_env(cls, url: str | None = None) -> Registry | None:
        """The registry named (else by HYINF_REGISTRY), with HYINF_TOKEN; None when none is named."""
        url = url or os.environ.get(URL_VAR)
        return cls(url, os.environ.get(TOKEN_VAR) or None) if url else None

    def _client(self, timeout: float | None = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout or self.timeout)

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        """One request; RegistryError with the server's own error line for anything but success."""
        import httpx

        try:
            with self._client(timeout) as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RegistryError(f"the registry {self.url} cannot be reached ({type(e).__name__}: {e})") from None
        if response.status_code >= 400:
            try:
                reason = response.json().get("error", response.text[:200])
            except ValueError:
                reason = response.text[:200]
            raise RegistryError(f"the registry {self.url} answered {response.status_code}: {reason}")
        return response

    def fetch(self, fingerprint: str, settings: dict[str, Any], device: Any) -> Fetched | None:
        """The plan for this structure, settings and device (DeviceFingerprint): an exact device match,
        else one of the same class. None on a miss; a warning, and None, when the lookup fails."""
        from hyinf.planner.document import PlanDocument

        body = {"fingerprint": fingerprint, "settings": settings, "device": asdict(device)}
        try:
            response = self._call("POST", "/v1/plans/match", json=body)
        except RegistryError as e:
            if "answered 404" not in str(e):
                warnings.warn(f"{e}; planning locally", RegistryWarning, stacklevel=2)
            return None
        try:
            found = response.json()
            document = PlanDocument.parse(json.dumps(found["document"]), "the registry's plan")
            verify(found["document"], found["plan"]["digest"])
            return Fetched(document, int(found["plan"]["id"]), str(found["match"]), list(found["differs"]))
        except (ValueError, KeyError, TypeError, PlanError) as e:
            warnings.warn(f"the registry {self.url} sent a plan that does not check out ({e}); planning locally", RegistryWarning, stacklevel=2)
            return None

    def pull(self, plan_id: int) -> Any:
        """Plan `plan_id` as a PlanDocument, its digest checked against the server's ETag."""
        from hyinf.planner.document import PlanDocument

        response = self._call("GET", f"/v1/plans/{plan_id}", timeout=30)
        document = PlanDocument.parse(response.content, f"the registry's plan {plan_id}")
        verify(dict(document.body), response.headers.get("etag", "").strip('"'))
        return document

    def publish_plan(self, body: dict[str, Any], structure: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish a plan document ({id, digest, created})."""
        return self._call("POST", "/v1/plans", timeout=60, json={"document": body, "structure": structure}).json()

    def publish_run(self, run: dict[str, Any]) -> int:
        """Upload a finished profile run; its id on the server."""
        return int(self._call("POST", "/v1/profile-runs", timeout=300, json=run).json()["id"])

    def fit(self, device_class: str, backend: str) -> dict[str, Any]:
        """Have the server fit the class's cost model from every uploaded run ({id, digest, created})."""
        return self._call("POST", "/v1/cost-models/fit", timeout=600, json={"device_class": device_class, "backend": backend}).json()


def verify(body: dict[str, Any], named: str) -> None:
    """PlanError unless the document's digest is the one the server named."""
    if digest(body) != named:
        raise PlanError(f"its digest {digest(body)[:12]} is not the {named[:12] or 'none'} the server named")
