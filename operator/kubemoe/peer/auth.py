"""Who may call a peer: client keys on both its doors, the user's and the other peers'.

- `/v1/` (user queries): the router's check, unchanged (`router.auth.ClientKeys` over the pipeline's
  client keys Secret `<name>-client-keys`, mounted like the router's): 401 without a known key, 403 for a
  revoked one, 429 over the key's rate. On by default; `spec.auth.enabled: false` opens it.
- `/peer/v1/` (gossip): the entry peer forwards the *caller's own* `Authorization` header with every call
  it makes to a neighbour for that query, and the neighbour checks it against the same Secret (revocation
  included, rate limit not: one user query is M calls to each chosen neighbour, and the entry peer already
  charged the key once).

Why the client keys and not a peer key the operator generates into its own Secret: the operator may not
read or write Secrets at all (its RBAC grants none, and tests/e2e/test_operator_rbac.py holds it to that),
and a generated Secret would need both; every peer already mounts the client keys, so no new Secret, no
new RBAC, and nothing new to rotate. A gossip call carries the authority of the query it serves: a
revoked key stops at every peer, and a neighbour's logs name the real client. Rotation lag: a neighbour
whose kubelet has not yet synced a brand-new key refuses it (401); the entry peer then skips that
neighbour within the layer deadline, as it skips any failed peer, and the query is still answered.

With `auth.enabled: false` both doors are open: whoever reaches a peer may already run the whole
pipeline, and a peer call is less (one call to that peer's model, capped at the aggregator's tokens).
"""

from __future__ import annotations

from contextvars import ContextVar

from kubemoe.router.auth import ClientKeys
from kubemoe.router.config import ClientAuthConfig, RouterConfig, UpstreamConfig
from kubemoe.router.http1 import HttpClient
from kubemoe.router.upstream import HttpBackend

#: The `Authorization` header of the user query being served (unset: auth is off, or a peer call).
#: Set by the peer's auth middleware; the query's upstream calls run in tasks that inherit it.
CALLER_AUTH: ContextVar[str | None] = ContextVar("kubemoe_peer_caller_auth", default=None)


def gossip_keys(auth: ClientAuthConfig) -> ClientKeys:
    """The check on `/peer/v1/`: the same keys and revocations, without the per-key rate limit."""
    return ClientKeys(auth.model_copy(update={"requests_per_second": None, "burst": None}))


class PeerBackend(HttpBackend):
    """The router's HTTP backend, plus the caller's `Authorization` on calls to other peers (matched by
    URL, never by name: only a peer's own API ever receives a client's key, never a model backend)."""

    def __init__(self, session: HttpClient, config: RouterConfig, *, peer_apis: set[str]) -> None:
        super().__init__(session, config)
        self._peer_apis = {u.rstrip("/") for u in peer_apis}

    def _headers(self, target: UpstreamConfig, *, stream: bool) -> list[tuple[str, str]]:
        headers = super()._headers(target, stream=stream)
        if target.url.rstrip("/") in self._peer_apis:
            caller = CALLER_AUTH.get()
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
            if caller:
                headers.append(("Authorization", caller))
        return headers
