"""What the mapping needs to know besides the record: topic kinds, default org, modes, limits, hook.

Also the small helpers every event mapper shares (organization resolution, path-safety, item
assembly), so that ``transactions``/``eligibility``/``attributions`` hold only their field tables.

The mapping hook
----------------
Issuers whose events do not look like ours can adapt them without forking the bridge: name a
function in config as ``"package.module:function"`` (``BRIDGE_MAPPING_HOOK``). It is imported once at
start by :meth:`MappingContext.load_hook` and then called for every record, after strict decoding and
before schema validation::

    def adapt(event: dict[str, Any], record: SourceRecord) -> dict[str, Any]:
        # e.g. rename fields, convert dollars to cents, add schema_version / event_type
        return {"schema_version": 1, "event_type": "transaction", ...}

* ``event`` is the decoded JSON object (a fresh ``dict``; the hook may mutate and return it).
  ``record`` gives access to topic, partition, offset, key and headers (read-only).
* It must return a ``dict`` in the canonical event shape of the record's topic (see
  ``topics/schemas/``); the result is validated exactly like a native event.
* It must be pure and deterministic: a retry or a replay maps the same bytes again and must get the
  same item (item ids and idempotency depend on it). It runs on the event loop, so it must be fast
  and must not block.
* To refuse a record with a precise reason, raise :class:`~bridge.errors.SchemaError` or
  :class:`~bridge.errors.MappingError` (``reason`` a snake_case code, a message without values).
  Any other exception becomes ``MappingError(reason="hook_failed")`` carrying only the exception's
  type name, never its text (which may quote card data). A non-dict result is ``hook_invalid_result``.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from bridge.errors import ConfigError, MappingError
from bridge.events.common import EventKind
from bridge.mapping.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem, Route, safe_path_segment

__all__ = [
    "AttributionMode",
    "MappingContext",
    "MappingHook",
    "OrderingSource",
    "build_item",
    "require_path_safe",
    "resolve_organization",
    "route_for",
]

MappingHook = Callable[[dict[str, Any], SourceRecord], Any]
AttributionMode = Literal["per_user", "bulk"]
OrderingSource = Literal["user_id", "record_key", "partition"]

_MAX_DEPTH_LIMIT = 200  # orjson.dumps refuses nesting beyond 254, and the depth walk recurses
# Organization ids already checked path-safe, and routes without a user, by (endpoint, org). Both are
# pure caches (a miss recomputes the same value); bounded, because org ids come from the events.
_CACHE_LIMIT = 4096
_SAFE_ORGS: set[str] = set()
_ROUTES: dict[tuple[Endpoint, str], Route] = {}


@dataclass(frozen=True, slots=True)
class MappingContext:
    """Everything :func:`~bridge.mapping.map_record` needs besides the record; built once at start.

    Attributes:
        kind_by_topic: input topic name → the event kind it carries (from the topic catalogue).
        organization_id: the default Kard organization id, used when an event carries none.
        attribution_mode: ``"per_user"`` posts attributions to
            ``v2/issuers/{org}/users/{user}/attributions``; ``"bulk"`` to ``v2/internal/attributions``.
        max_value_bytes: larger record values are refused (``too_large``) before parsing.
        max_depth: deepest JSON nesting accepted (the top-level object is 1).
        ordering: what ``MappedItem.ordering_key`` is: the event's user id (default; APPROVED then
            SETTLED of one user's transaction stay in order), the record key (hex; the user id when
            the key is null), or the source partition (strictest: one in-flight item per partition).
        hook: an optional adapter from the issuer's event shape to ours (see the module docstring).

    Raises:
        ConfigError: on an unsafe default organization id or out-of-range limits.
    """

    kind_by_topic: Mapping[str, EventKind]
    organization_id: str | None = None
    attribution_mode: AttributionMode = "per_user"
    max_value_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    ordering: OrderingSource = "user_id"
    hook: MappingHook | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.organization_id is not None and not safe_path_segment(self.organization_id):
            raise ConfigError("the default organization id cannot be used in a URL path (/ ? # % or whitespace)")
        if self.attribution_mode not in ("per_user", "bulk"):
            raise ConfigError("attribution_mode must be 'per_user' or 'bulk'")
        if self.ordering not in ("user_id", "record_key", "partition"):
            raise ConfigError("ordering must be 'user_id', 'record_key' or 'partition'")
        if self.max_value_bytes <= 0:
            raise ConfigError("max_value_bytes must be positive")
        if not 1 <= self.max_depth <= _MAX_DEPTH_LIMIT:
            raise ConfigError(f"max_depth must be between 1 and {_MAX_DEPTH_LIMIT}")
        for topic, kind in self.kind_by_topic.items():
            if not isinstance(kind, EventKind):
                raise ConfigError(f"topic {topic!r}: unknown event kind")

    @staticmethod
    def load_hook(spec: str) -> MappingHook:
        """Import the hook named ``"package.module:function"``.

        Raises:
            ConfigError: the spec is malformed, the module cannot be imported, or the attribute is
                missing or not callable.
        """
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"mapping hook {spec!r} must look like 'package.module:function'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"mapping hook {spec!r}: cannot import {module_name!r}: {exc}") from exc
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ConfigError(f"mapping hook {spec!r}: {module_name!r} has no attribute {attr!r}")
        if not callable(target):
            raise ConfigError(f"mapping hook {spec!r} is not callable")
        hook: MappingHook = target
        return hook


def resolve_organization(values: Mapping[str, Any], ctx: MappingContext) -> str:
    """The event's organization id, else the default; it must be usable as a URL path segment.

    Raises:
        MappingError: ``missing_organization_id`` or ``unsafe_path_id``.
    """
    org: str | None = values.get("organization_id") or ctx.organization_id
    if org is None:
        raise MappingError(
            "missing_organization_id",
            "the event has no organization_id and no default organization is configured",
            pointer="/organization_id",
        )
    if org not in _SAFE_ORGS:
        if not safe_path_segment(org):
            raise MappingError(
                "unsafe_path_id", "cannot be used in a URL path (/ ? # % or whitespace)", pointer="/organization_id"
            )
        if len(_SAFE_ORGS) >= _CACHE_LIMIT:
            _SAFE_ORGS.clear()
        _SAFE_ORGS.add(org)
    return org


def require_path_safe(value: str, pointer: str) -> str:
    """``value`` unchanged when it can be a URL path segment.

    Raises:
        MappingError: ``unsafe_path_id``.
    """
    if not safe_path_segment(value):
        raise MappingError("unsafe_path_id", "cannot be used in a URL path (/ ? # % or whitespace)", pointer=pointer)
    return value


def _encode(item: dict[str, Any]) -> bytes:
    """The item's wire JSON, right-sized: it lives as long as the record is buffered.

    orjson (3.12+) returns bytes in an allocation of at least 4 KiB whatever their length, and an item is
    a few hundred bytes: kept as is, 20,000 buffered records held ~80 MB of slack (measured with
    tracemalloc). One copy of the exact length costs far less than that memory.
    """
    try:
        return memoryview(orjson.dumps(item)).tobytes()
    except orjson.JSONEncodeError:
        # Only reachable through a mapping hook: values straight from decode_value always encode.
        raise MappingError(
            "invalid_unicode", "the mapped item cannot be encoded as UTF-8 JSON (lone surrogate?)"
        ) from None


def _ordering_key(values: Mapping[str, Any], record: SourceRecord, ctx: MappingContext) -> str:
    if ctx.ordering == "user_id":
        user: str = values["user_id"]
        return user
    if ctx.ordering == "record_key" and record.key is not None:
        return "k:" + record.key.hex()
    if ctx.ordering == "partition":
        return f"p:{record.topic}:{record.partition}"
    fallback: str = values["user_id"]
    return fallback


def build_item(
    *,
    route: Route,
    item: dict[str, Any],
    item_id: str | None,
    values: Mapping[str, Any],
    record: SourceRecord,
    ctx: MappingContext,
) -> MappedItem:
    """Assemble the :class:`MappedItem`; ``item_id=None`` derives a digest (items without an API id).

    The digest is the first 96 bits of BLAKE2b over the canonical (sorted-key) JSON of the route
    path and the item, so identical content for the same user yields the same id on every replay.
    """
    encoded = _encode(item)
    if item_id is None:
        canonical = orjson.dumps([route.path, item], option=orjson.OPT_SORT_KEYS)
        item_id = hashlib.blake2b(canonical, digest_size=12).hexdigest()
    return MappedItem(
        route=route,
        item=item,
        item_id=item_id,
        ordering_key=_ordering_key(values, record, ctx),
        encoded=encoded,
        event_id=values["event_id"],
    )


def route_for(endpoint: Endpoint, org: str, user_id: str | None = None) -> Route:
    """The route of an item; routes without a user are shared (they are immutable)."""
    if user_id is not None:
        return Route(endpoint=endpoint, organization_id=org, user_id=user_id)
    route = _ROUTES.get((endpoint, org))
    if route is None:
        if len(_ROUTES) >= _CACHE_LIMIT:
            _ROUTES.clear()
        route = _ROUTES[(endpoint, org)] = Route(endpoint=endpoint, organization_id=org)
    return route
