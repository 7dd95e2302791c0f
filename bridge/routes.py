"""Where a mapped item goes: the Kard endpoint, its path parameters, and its per-request limits.

A *route* is the unit of batching: items that share a route can travel in one request body
(``{"data": [...]}``). Limits come from ``CONTRACT.md`` §5 (the API documents them in docstrings only;
neither the SDK nor the server we were described promises to enforce them, so the bridge must).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = ["ENDPOINT_LIMITS", "Endpoint", "MappedItem", "Route", "safe_path_segment"]


class Endpoint(enum.StrEnum):
    """The batch endpoints a bridge posts to."""

    TRANSACTIONS = "transactions"  # POST v2/issuers/{org}/transactions            (max 500)
    FRAUD = "fraud"  # POST v2/issuers/{org}/fraud                                  (max 500)
    USER_ATTRIBUTIONS = "user_attributions"  # POST v2/issuers/{org}/users/{user}/attributions (max 100)
    BULK_ATTRIBUTIONS = "bulk_attributions"  # POST v2/internal/attributions        (max 100)
    ELIGIBILITY = "eligibility"  # POST internal/eligibility-broker/ingest         (no stated limit)


#: Maximum items per request. Eligibility has no documented limit; we cap it like transactions.
ENDPOINT_LIMITS: dict[Endpoint, int] = {
    Endpoint.TRANSACTIONS: 500,
    Endpoint.FRAUD: 500,
    Endpoint.USER_ATTRIBUTIONS: 100,
    Endpoint.BULK_ATTRIBUTIONS: 100,
    Endpoint.ELIGIBILITY: 500,
}

_UNSAFE_IN_PATH = frozenset("/?#%")


def _path(endpoint: Endpoint, organization_id: str | None, user_id: str | None) -> str:
    """The request path of a route (see :attr:`Route.path`)."""
    org = quote(organization_id or "", safe="")
    match endpoint:
        case Endpoint.TRANSACTIONS:
            return f"v2/issuers/{org}/transactions"
        case Endpoint.FRAUD:
            return f"v2/issuers/{org}/fraud"
        case Endpoint.USER_ATTRIBUTIONS:
            return f"v2/issuers/{org}/users/{quote(user_id or '', safe='')}/attributions"
        case Endpoint.BULK_ATTRIBUTIONS:
            return "v2/internal/attributions"
        case Endpoint.ELIGIBILITY:
            return "internal/eligibility-broker/ingest"


def safe_path_segment(value: str) -> bool:
    """True when ``value`` can be a URL path segment as is (no ``/ ? # %``, no whitespace, not empty)."""
    return bool(value) and value not in {".", ".."} and not any(c in _UNSAFE_IN_PATH or c.isspace() for c in value)


@dataclass(frozen=True, slots=True)
class Route:
    """An endpoint plus its path parameters; hashable, so it keys the batcher's buffers.

    Attributes:
        path: the request path relative to the API base URL (no leading slash), ids percent-encoded.
            Computed once here: it is read per request and per result record.
    """

    endpoint: Endpoint
    organization_id: str | None = None
    user_id: str | None = None
    path: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.endpoint, self.organization_id, self.user_id))

    @property
    def max_items(self) -> int:
        return ENDPOINT_LIMITS[self.endpoint]

    def __str__(self) -> str:
        """A short label for logs and metrics; user ids are left out (they can be many, and personal)."""
        return f"{self.endpoint.value}:{self.organization_id or '-'}"


@dataclass(frozen=True, slots=True)
class MappedItem:
    """One Kard ``data[]`` item made from one input record.

    Attributes:
        route: where it goes.
        item: the wire JSON object (camelCase), exactly as it will appear in ``data[]``.
        item_id: a deterministic id: the item's own ``id`` where the API has one, otherwise a stable
            digest of the event. A retry or replay of the same event yields the same ``item_id``.
        ordering_key: records with the same key are delivered in order (default: the user id).
        encoded: ``orjson.dumps(item)``, computed once; its length counts against batch byte limits.
        event_id: the issuer's event id, for result records and logs.
    """

    route: Route
    item: dict[str, Any]
    item_id: str
    ordering_key: str
    encoded: bytes
    event_id: str = field(default="")
