"""The fault-injection configuration of the Kard sandbox: validated pydantic models, JSON in and out.

One document configures every fault; the same JSON is accepted by ``kard-bridge sandbox --faults`` and by
``POST /_sandbox/faults``, and ``GET /_sandbox/faults`` returns it (normalised, with the seed filled in)::

    {"seed": 7, "rules": [
        {"endpoint": "transactions", "error_rates": {"503": 0.1}},
        {"latency": {"dist": "exponential", "mean": 0.02}, "capacity": {"max_in_flight": 8, "mode": "queue"}}
    ]}

A document without ``rules`` is one rule (``{"error_rates": {"500": 1}, "times": 2}``). ``endpoint`` scopes a
rule: one sandbox endpoint name, a list of them, ``null`` (every Kard endpoint except ``token``) or ``"*"``
(all, token included). ``/_sandbox/*`` is never faulted. What each field does is in :mod:`bridge.sandbox.faults`.

Per-item rejections: ``{"reject_items": {"prefix": "bad-", "fields": ["id"]}}`` names each rejected item in the
error (``id``, ``source.pointer``); add ``"attribute": false`` to refuse the whole request instead with an
error that names no item (see :class:`RejectItems`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ENDPOINT_NAMES",
    "Capacity",
    "Drop",
    "FaultConfig",
    "FaultRule",
    "Hang",
    "Latency",
    "Outage",
    "RateLimit",
    "RejectItems",
    "RetryAfter",
    "parse_fault_config",
]

#: Every Kard endpoint the sandbox serves, by the names used in faults, stats and ``/_sandbox/received``.
ENDPOINT_NAMES: tuple[str, ...] = (
    "token",
    "ping",
    "transactions",
    "fraud",
    "audits",
    "user_attributions",
    "bulk_attributions",
    "eligibility",
    "users_create",
    "users_update",
    "users_delete",
    "uploads_create",
    "uploads_part",
    "uploads_complete",
)

_Rate = Annotated[float, Field(ge=0.0, le=1.0)]
_Seconds = Annotated[float, Field(ge=0.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Model):
    """Delay before answering: ``fixed`` seconds, or a distribution, plus ``per_item`` seconds per data item.

    ``dist``: ``uniform`` (``low``, ``high``), ``normal`` (``mean``, ``stddev``, clamped at 0),
    ``exponential`` (``mean``), ``lognormal`` (``median``, ``sigma``). ``fixed`` is added to the sample.
    """

    fixed: _Seconds = 0.0
    dist: Literal["uniform", "normal", "exponential", "lognormal"] | None = None
    low: _Seconds = 0.0
    high: _Seconds = 0.0
    mean: _Seconds = 0.0
    stddev: _Seconds = 0.0
    median: _Seconds = 0.0
    sigma: _Seconds = 0.0
    per_item: _Seconds = 0.0


class RetryAfter(_Model):
    """Headers put on this rule's 429 and 503 answers.

    ``seconds``: the ``Retry-After`` value (None: no header). ``format``: ``seconds`` or ``http-date``.
    ``reset_header``: also send ``X-RateLimit-Reset`` (absolute epoch seconds). ``ms_header``: also send
    ``Retry-After-Ms`` (the SDK ignores it; see CONTRACT.md §3).
    """

    seconds: _Seconds | None = 1.0
    format: Literal["seconds", "http-date"] = "seconds"
    reset_header: bool = False
    ms_header: bool = False


class Outage(_Model):
    """Every request fails for ``duration`` seconds from ``start_in`` seconds after the rule is set.

    ``mode``: ``503`` (ErrorResponse with ``Retry-After`` = the time left) or ``drop`` (the connection is closed
    without an answer, as if the service were unreachable).
    """

    duration: _Seconds
    start_in: _Seconds = 0.0
    mode: Literal["503", "drop"] = "503"


class Hang(_Model):
    """With probability ``rate``, answer only after ``delay`` seconds (None: never; the sandbox waits until
    the client gives up and closes the connection)."""

    rate: _Rate = 1.0
    delay: _Seconds | None = None


class Drop(_Model):
    """With probability ``rate``, close the connection without an answer. ``when="after"`` processes and
    records the request first (the ambiguous failure: the items arrived but the client cannot know)."""

    rate: _Rate = 1.0
    when: Literal["before", "after"] = "before"


class RejectItems(_Model):
    """Items where any of ``fields`` starts with ``prefix`` fail with an error of ``status`` (a 4xx or 5xx).

    ``id`` is the item's own id; other names are looked up in ``attributes``.

    ``attribute=True`` (the default) names each bad item: its error carries the item's ``id`` and a
    ``source.pointer`` (``/data/<i>/id`` or ``/data/<i>/attributes/<field>``). On 207 endpoints this gives a
    207 (or a 400/``status`` when no item is left); elsewhere the whole request fails and lists them.

    ``attribute=False`` refuses the *whole request*, on every endpoint (no 207), whenever at least one bad
    item is in it, with a single error that names no item (no ``id``, no ``source.pointer``) and no
    items are recorded. A client can only find the culprit by splitting the batch (the bridge bisects):
    requests without a bad item pass.
    """

    prefix: str = Field(min_length=1)
    fields: tuple[str, ...] = ("id", "transactionId", "entityId")
    status: str = "400"
    title: str = "Invalid Request"
    detail: str = "rejected by the sandbox (reject_items fault)"
    attribute: bool = True

    @field_validator("status")
    @classmethod
    def _error_status(cls, value: str) -> str:
        if not (value.isdigit() and 400 <= int(value) <= 599):
            raise ValueError(f"status must be an HTTP error status 400-599, got {value!r}")
        return value


class Capacity(_Model):
    """At most ``max_in_flight`` requests are served at once (counted over the rule's endpoints).

    ``mode="reject"``: beyond it answer 429 (with ``retry_after`` headers). ``mode="queue"``: wait for a free
    slot, which adds latency the way a saturated server does (latency faults run while holding the slot).
    """

    max_in_flight: int = Field(ge=1)
    mode: Literal["reject", "queue"] = "reject"


class RateLimit(_Model):
    """A token bucket: ``rps`` requests per second with bursts of ``burst``; beyond it answer 429.

    Without ``retry_after`` on the rule, ``Retry-After`` says when the next token is due (at least 1 s).
    """

    rps: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


class FaultRule(_Model):
    """One rule: where it applies and what it injects. See :mod:`bridge.sandbox.faults` for the order."""

    endpoint: str | list[str] | None = None
    after: int = Field(default=0, ge=0)  # let the first ``after`` matching requests through untouched
    times: int | None = Field(default=None, ge=1)  # then affect at most ``times`` requests
    latency: Latency | None = None
    error_rates: dict[str, _Rate] = Field(default_factory=dict)
    error_body: Literal["jsonapi", "gateway", "text", "empty"] = "jsonapi"
    retry_after: RetryAfter | None = None
    outage: Outage | None = None
    hang: Hang | None = None
    drop: Drop | None = None
    reject_items: RejectItems | None = None
    reject_duplicates: bool = False  # ids already accepted fail with 409; needs --record ids or full
    capacity: Capacity | None = None
    rate_limit: RateLimit | None = None

    @field_validator("endpoint")
    @classmethod
    def _known_endpoints(cls, value: str | list[str] | None) -> str | list[str] | None:
        names = [value] if isinstance(value, str) else (value or [])
        for name in names:
            if name != "*" and name not in ENDPOINT_NAMES:
                raise ValueError(f"unknown endpoint {name!r}; expected one of {', '.join(ENDPOINT_NAMES)} or '*'")
        return value

    @field_validator("error_rates")
    @classmethod
    def _statuses(cls, value: dict[str, float]) -> dict[str, float]:
        for status in value:
            if not (status.isdigit() and 400 <= int(status) <= 599):
                raise ValueError(f"error_rates keys must be HTTP statuses 400-599, got {status!r}")
        if sum(value.values()) > 1.0 + 1e-9:
            raise ValueError("error_rates must add up to at most 1")
        return value

    def matches(self, endpoint: str) -> bool:
        """True when this rule applies to ``endpoint``."""
        scope = self.endpoint
        if scope is None:
            return endpoint != "token"
        if isinstance(scope, str):
            return scope in ("*", endpoint)
        return endpoint in scope or "*" in scope


class FaultConfig(_Model):
    """Every fault rule, plus the seed of the fault RNG (None: chosen at random and reported back)."""

    seed: int | None = None
    rules: tuple[FaultRule, ...] = ()


def parse_fault_config(document: Any) -> FaultConfig:
    """Build a :class:`FaultConfig` from parsed JSON; a document without ``rules`` is a single rule.

    Raises:
        pydantic.ValidationError: the document is not a valid fault configuration.
    """
    if document is None:
        return FaultConfig()
    if isinstance(document, dict) and "rules" not in document:
        rule = dict(document)
        seed = rule.pop("seed", None)
        return FaultConfig.model_validate({"seed": seed, "rules": [rule] if rule else []})
    return FaultConfig.model_validate(document)
