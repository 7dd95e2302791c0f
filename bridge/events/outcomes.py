"""The bridge's own records: the RESULT value (one per delivered record) and the FAILURE headers.

Every input record ends in exactly one outcome record (STYLE §11):

* **Result** (``<input>.results``): key = the input key, value = the JSON of :class:`ResultValue`.
  The source key is repeated in the value as text when it is printable UTF-8
  (``key_encoding: "utf-8"``), otherwise base64 (``"base64"``): readable in the common case,
  lossless always. Built by :func:`build_result_value` straight into bytes (no model per record).
* **Batch result** (``BRIDGE_RESULT_MODE=batch``, same topic): one record per API request and input
  topic, value = the JSON of :class:`BatchResultValue` (``outcome: "delivered_batch"``, one entry per
  delivered input record in ``records``); key = the input key when every record shares it, else none.
  Built by :func:`build_batch_result_value`. Fewer, larger records: the produce cost per input
  record drops by the batch size (see BENCHMARKS.md), at the price of per-key ordering on the topic.
* **Failure** (``<input>.dlq``): key, value and headers of the input record **byte for byte**, plus
  the ``kard-bridge.*`` headers below (:class:`FailureHeaders`). The value may hold card data, so
  the DLQ is PCI storage; the added headers never hold payload values: RecordError messages are
  value-free by construction, and API error details are truncated and have card-number-like digit
  runs masked (:func:`sanitize_text`). A replayed record that fails again carries both its earlier
  ``kard-bridge.*`` headers and the new ones; readers take the **last** occurrence of each name
  (:meth:`FailureHeaders.from_headers`).

Header values are UTF-8 text: integers in decimal, times in RFC 3339 UTC (``...Z``).
Everything here is pure: no Kafka I/O, time is passed in.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from bridge.errors import BridgeError, DeliveryError, RecordError, RejectedError, TransientDeliveryError
from bridge.events.common import format_utc
from bridge.records import Header, SourceRecord
from bridge.routes import Endpoint, MappedItem, Route

__all__ = [
    "FAILURE_HEADER_NAMES",
    "HEADER_API_DETAIL",
    "HEADER_API_POINTER",
    "HEADER_ATTEMPTS",
    "HEADER_BRIDGE_INSTANCE",
    "HEADER_BRIDGE_VERSION",
    "HEADER_EVENT_ID",
    "HEADER_FIRST_FAILURE_AT",
    "HEADER_HTTP_STATUS",
    "HEADER_ITEM_ID",
    "HEADER_LAST_FAILURE_AT",
    "HEADER_MESSAGE",
    "HEADER_POINTER",
    "HEADER_PREFIX",
    "HEADER_REASON",
    "HEADER_REASON_CLASS",
    "HEADER_REPLAY_COUNT",
    "HEADER_ROUTE",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TIMESTAMP",
    "HEADER_SOURCE_TOPIC",
    "RESULT_SCHEMA_VERSION",
    "ApiSummary",
    "BatchResultValue",
    "FailureHeaders",
    "ReasonClass",
    "ResultValue",
    "build_batch_result_value",
    "build_failure_headers",
    "build_result_value",
    "decode_key",
    "encode_key",
    "failure_headers_for",
    "replay_count_of",
    "sanitize_text",
]

RESULT_SCHEMA_VERSION: Final = 1

HEADER_PREFIX: Final = "kard-bridge."
HEADER_REASON: Final = "kard-bridge.reason"  # stable snake_case code, e.g. malformed_json, http_400
HEADER_REASON_CLASS: Final = "kard-bridge.reason-class"  # ReasonClass value
HEADER_MESSAGE: Final = "kard-bridge.message"  # human text, never payload values
HEADER_POINTER: Final = "kard-bridge.pointer"  # JSON pointer into the event (decode/schema/mapping errors)
HEADER_HTTP_STATUS: Final = "kard-bridge.http-status"
HEADER_API_DETAIL: Final = "kard-bridge.api-detail"  # errors[].detail from the API, sanitised
HEADER_API_POINTER: Final = "kard-bridge.api-pointer"  # errors[].source.pointer from the API
HEADER_ATTEMPTS: Final = "kard-bridge.attempts"  # HTTP attempts made (0 when it never left the bridge)
HEADER_FIRST_FAILURE_AT: Final = "kard-bridge.first-failure-at"
HEADER_LAST_FAILURE_AT: Final = "kard-bridge.last-failure-at"
HEADER_SOURCE_TOPIC: Final = "kard-bridge.source-topic"
HEADER_SOURCE_PARTITION: Final = "kard-bridge.source-partition"
HEADER_SOURCE_OFFSET: Final = "kard-bridge.source-offset"
HEADER_SOURCE_TIMESTAMP: Final = "kard-bridge.source-timestamp"  # the input record's timestamp, epoch ms
HEADER_EVENT_ID: Final = "kard-bridge.event-id"
HEADER_ITEM_ID: Final = "kard-bridge.item-id"
HEADER_ROUTE: Final = "kard-bridge.route"  # the Endpoint value
HEADER_BRIDGE_VERSION: Final = "kard-bridge.bridge-version"
HEADER_BRIDGE_INSTANCE: Final = "kard-bridge.bridge-instance"
HEADER_REPLAY_COUNT: Final = "kard-bridge.replay-count"  # how often the record was replayed before this failure

_MAX_HEADER_TEXT = 1024


class ReasonClass(enum.StrEnum):
    """Why a record failed, coarsely: what an operator does next depends on it."""

    DECODE = "decode"  # fix the producer
    SCHEMA = "schema"  # fix the producer or the mapping hook
    MAPPING = "mapping"  # fix ids/config (unsafe path id, missing organization)
    REJECTED = "rejected"  # the API refused the item (4xx, per-item 207 error)
    RETRIES_EXHAUSTED = "retries_exhausted"  # transient failures outlasted the retry budget; replay later


KeyEncoding = Literal["utf-8", "base64"]


def encode_key(key: bytes | None) -> tuple[str | None, KeyEncoding | None]:
    """The key as printable UTF-8 text when it is one, else base64; ``(None, None)`` for no key."""
    if key is None:
        return None, None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return text, "utf-8"
    return base64.b64encode(key).decode("ascii"), "base64"


def decode_key(key: str | None, encoding: KeyEncoding | None) -> bytes | None:
    """Inverse of :func:`encode_key`."""
    if key is None:
        return None
    return base64.b64decode(key) if encoding == "base64" else key.encode("utf-8")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceRef(_Model):
    """Where the input record was."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key: str | None = Field(description="The record key: text when printable UTF-8, else base64.")
    key_encoding: KeyEncoding | None
    timestamp_ms: int = Field(description="The input record's timestamp, epoch milliseconds.")


class RouteRef(_Model):
    """Where the item went."""

    endpoint: Endpoint
    path: str = Field(description="Request path relative to the API base URL.")
    organization_id: str | None


class ApiSummary(_Model):
    """What the API said about the request that carried the item (fields absent when not given)."""

    job_id: str | None = Field(default=None, description="data.id of a queued job (transactions, user attributions).")
    job_status: str | None = Field(default=None, description="data.attributes.status of the job, e.g. queued.")
    total_processed: int | None = Field(default=None, description="meta.totalProcessed (bulk attributions).")
    batch_items: int | None = Field(default=None, ge=1, description="How many items the request carried.")
    partial: bool = Field(default=False, description="True when the response was a 207 (other items failed).")


class BridgeRef(_Model):
    """Which bridge process produced the record."""

    instance_id: str
    version: str


class ResultValue(_Model):
    """The value of a result record: the input record was delivered to the Kard API."""

    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    outcome: Literal["delivered"] = "delivered"
    source: SourceRef
    event_id: str | None = Field(description="The issuer's event id.")
    item_id: str = Field(description="The Kard item id, or the item digest for items without one.")
    route: RouteRef
    http_status: int = Field(ge=100, le=599)
    response: ApiSummary
    attempts: int = Field(ge=1, description="HTTP attempts made for this item, the successful one included.")
    latency_ms: float = Field(ge=0, description="From consumption to the API's answer, milliseconds.")
    first_attempt_at: datetime
    completed_at: datetime
    bridge: BridgeRef


class BatchRecordRef(SourceRef):
    """One delivered input record of a batch result: where it was (as in a result's ``source``) and its item."""

    event_id: str | None = Field(description="The issuer's event id.")
    item_id: str = Field(description="The Kard item id, or the item digest for items without one.")


class BatchResultValue(_Model):
    """The value of a batch result record (``BRIDGE_RESULT_MODE=batch``): these input records were delivered.

    One record per API request and input topic; the fields from ``route`` on mean what they mean in
    :class:`ResultValue` and hold for every entry of ``records``.
    """

    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    outcome: Literal["delivered_batch"] = "delivered_batch"
    records: list[BatchRecordRef] = Field(min_length=1, description="The delivered input records, in request order.")
    route: RouteRef
    http_status: int = Field(ge=100, le=599)
    response: ApiSummary
    attempts: int = Field(ge=1, description="HTTP attempts made for these items, the successful one included.")
    latency_ms: float = Field(ge=0, description="From consumption to the API's answer, milliseconds.")
    first_attempt_at: datetime
    completed_at: datetime
    bridge: BridgeRef


class _TailMemo:
    """The serialised second half of the last result value built, and the arguments it came from.

    Everything from ``http_status`` on is the same for every record of one batch (one response object,
    one pair of times), so it is serialised once per batch instead of once per record: a result value
    is the per-record head plus this tail, byte for byte what one ``orjson.dumps`` of the whole document
    gives (orjson writes no whitespace, and the keys keep their order). The objects are compared by
    identity and the scalars by value and exact type, so a reused tail is always the one those
    arguments would produce (``1`` and ``True``, or ``12`` and ``12.0``, are equal but print differently).
    """

    __slots__ = ("completed_at", "first_attempt_at", "response", "scalars", "tail")

    def __init__(self) -> None:
        self.completed_at: datetime | None = None
        self.first_attempt_at: datetime | None = None
        self.response: ApiSummary | None = None
        self.scalars: tuple[Any, ...] = ()
        self.tail = b""


_TAIL = _TailMemo()


def _result_tail(
    http_status: int,
    response: ApiSummary,
    attempts: int,
    latency_ms: float,
    first_attempt_at: datetime,
    completed_at: datetime,
    instance_id: str,
    bridge_version: str,
) -> bytes:
    memo = _TAIL
    # 0.0 and -0.0 are equal but print differently: a zero latency is never memoised.
    exact = type(http_status) is int and type(attempts) is int and type(latency_ms) is float and latency_ms != 0.0
    scalars = (http_status, attempts, latency_ms, instance_id, bridge_version)
    if (
        exact
        and memo.completed_at is completed_at
        and memo.first_attempt_at is first_attempt_at
        and memo.response is response
        and memo.scalars == scalars
    ):
        return memo.tail
    document: dict[str, Any] = {
        "http_status": http_status,
        "response": response.model_dump(),
        "attempts": attempts,
        "latency_ms": round(latency_ms, 3),
        "first_attempt_at": format_utc(first_attempt_at),
        "completed_at": format_utc(completed_at),
        "bridge": {"instance_id": instance_id, "version": bridge_version},
    }
    tail = b"," + orjson.dumps(document)[1:]
    if exact:
        memo.completed_at, memo.first_attempt_at, memo.response = completed_at, first_attempt_at, response
        memo.scalars, memo.tail = scalars, tail
    return tail


def _source_fields(record: SourceRecord) -> dict[str, Any]:
    """A :class:`SourceRef` as plain JSON fields (shared by result and batch result values)."""
    key, key_encoding = encode_key(record.key)
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "key_encoding": key_encoding,
        "timestamp_ms": record.timestamp_ms,
    }


def _route_fields(route: Route) -> dict[str, Any]:
    """A :class:`RouteRef` as plain JSON fields."""
    return {"endpoint": route.endpoint.value, "path": route.path, "organization_id": route.organization_id}


def build_result_value(
    record: SourceRecord,
    item: MappedItem,
    *,
    http_status: int,
    response: ApiSummary,
    attempts: int,
    latency_ms: float,
    first_attempt_at: datetime,
    completed_at: datetime,
    instance_id: str,
    bridge_version: str,
) -> bytes:
    """The JSON bytes of a :class:`ResultValue` (no model per record: this runs once per delivered record).

    The fields from ``http_status`` on are serialised once per distinct argument set (see
    :class:`_TailMemo`), which the records of one batch share.
    """
    head = orjson.dumps(
        {
            "schema_version": RESULT_SCHEMA_VERSION,
            "outcome": "delivered",
            "source": _source_fields(record),
            "event_id": item.event_id or None,
            "item_id": item.item_id,
            "route": _route_fields(item.route),
        }
    )
    tail = _result_tail(
        http_status, response, attempts, latency_ms, first_attempt_at, completed_at, instance_id, bridge_version
    )
    return head[:-1] + tail


def build_batch_result_value(
    delivered: Sequence[tuple[SourceRecord, MappedItem]],
    *,
    http_status: int,
    response: ApiSummary,
    attempts: int,
    latency_ms: float,
    first_attempt_at: datetime,
    completed_at: datetime,
    instance_id: str,
    bridge_version: str,
) -> bytes:
    """The JSON bytes of a :class:`BatchResultValue` for records delivered by one request.

    Every item shares one route (one request carries one route); the route is taken from the first.
    """
    if not delivered:
        raise ValueError("a batch result needs at least one delivered record")
    entries = [
        _source_fields(record) | {"event_id": item.event_id or None, "item_id": item.item_id}
        for record, item in delivered
    ]
    head = orjson.dumps(
        {
            "schema_version": RESULT_SCHEMA_VERSION,
            "outcome": "delivered_batch",
            "records": entries,
            "route": _route_fields(delivered[0][1].route),
        }
    )
    tail = _result_tail(
        http_status, response, attempts, latency_ms, first_attempt_at, completed_at, instance_id, bridge_version
    )
    return head[:-1] + tail


_HeaderCount = Annotated[int, Field(ge=0), WithJsonSchema({"type": "string", "pattern": "^[0-9]+$"})]
_HeaderStatus = Annotated[int, Field(ge=100, le=599), WithJsonSchema({"type": "string", "pattern": "^[1-5][0-9]{2}$"})]
_HeaderEpochMs = Annotated[int, WithJsonSchema({"type": "string", "pattern": "^-?[0-9]+$"})]
_HeaderText = Annotated[str, Field(max_length=_MAX_HEADER_TEXT)]


class FailureHeaders(BaseModel):
    """The ``kard-bridge.*`` headers a failure record adds to the input record's own headers.

    Field names are the Python names; aliases are the header names (the JSON Schema shows those).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True)

    reason: str = Field(validation_alias=HEADER_REASON, serialization_alias=HEADER_REASON, pattern=r"^[a-z0-9_]+$")
    reason_class: ReasonClass = Field(validation_alias=HEADER_REASON_CLASS, serialization_alias=HEADER_REASON_CLASS)
    message: _HeaderText = Field(validation_alias=HEADER_MESSAGE, serialization_alias=HEADER_MESSAGE)
    pointer: _HeaderText | None = Field(
        default=None, validation_alias=HEADER_POINTER, serialization_alias=HEADER_POINTER
    )
    http_status: _HeaderStatus | None = Field(
        default=None, validation_alias=HEADER_HTTP_STATUS, serialization_alias=HEADER_HTTP_STATUS
    )
    api_detail: _HeaderText | None = Field(
        default=None, validation_alias=HEADER_API_DETAIL, serialization_alias=HEADER_API_DETAIL
    )
    api_pointer: _HeaderText | None = Field(
        default=None, validation_alias=HEADER_API_POINTER, serialization_alias=HEADER_API_POINTER
    )
    attempts: _HeaderCount = Field(validation_alias=HEADER_ATTEMPTS, serialization_alias=HEADER_ATTEMPTS)
    first_failure_at: datetime = Field(
        validation_alias=HEADER_FIRST_FAILURE_AT, serialization_alias=HEADER_FIRST_FAILURE_AT
    )
    last_failure_at: datetime = Field(
        validation_alias=HEADER_LAST_FAILURE_AT, serialization_alias=HEADER_LAST_FAILURE_AT
    )
    source_topic: str = Field(validation_alias=HEADER_SOURCE_TOPIC, serialization_alias=HEADER_SOURCE_TOPIC)
    source_partition: _HeaderCount = Field(
        validation_alias=HEADER_SOURCE_PARTITION, serialization_alias=HEADER_SOURCE_PARTITION
    )
    source_offset: _HeaderCount = Field(validation_alias=HEADER_SOURCE_OFFSET, serialization_alias=HEADER_SOURCE_OFFSET)
    source_timestamp: _HeaderEpochMs | None = Field(
        default=None, validation_alias=HEADER_SOURCE_TIMESTAMP, serialization_alias=HEADER_SOURCE_TIMESTAMP
    )
    event_id: str | None = Field(default=None, validation_alias=HEADER_EVENT_ID, serialization_alias=HEADER_EVENT_ID)
    item_id: str | None = Field(default=None, validation_alias=HEADER_ITEM_ID, serialization_alias=HEADER_ITEM_ID)
    route: Endpoint | None = Field(default=None, validation_alias=HEADER_ROUTE, serialization_alias=HEADER_ROUTE)
    bridge_version: str = Field(validation_alias=HEADER_BRIDGE_VERSION, serialization_alias=HEADER_BRIDGE_VERSION)
    bridge_instance: str | None = Field(
        default=None, validation_alias=HEADER_BRIDGE_INSTANCE, serialization_alias=HEADER_BRIDGE_INSTANCE
    )
    replay_count: _HeaderCount = Field(
        default=0, validation_alias=HEADER_REPLAY_COUNT, serialization_alias=HEADER_REPLAY_COUNT
    )

    def to_headers(self) -> tuple[Header, ...]:
        """The headers in field order, UTF-8 encoded; absent optional headers are left out."""
        out: list[Header] = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, datetime):
                text = format_utc(value)
            elif isinstance(value, enum.Enum):
                text = str(value.value)
            else:
                text = str(value)
            out.append((str(info.serialization_alias), text.encode("utf-8")))
        return tuple(out)

    @classmethod
    def from_headers(cls, headers: Sequence[Header]) -> Self:
        """Read the ``kard-bridge.*`` headers of a failure record (the last occurrence of each wins).

        Raises:
            pydantic.ValidationError: a required header is missing or malformed.
        """
        values: dict[str, str] = {}
        for name, raw in headers:
            if name in FAILURE_HEADER_NAMES:  # unknown kard-bridge.* headers (newer bridges) are ignored
                values[name] = raw.decode("utf-8", errors="replace")
        return cls.model_validate(values)


FAILURE_HEADER_NAMES: tuple[str, ...] = tuple(
    str(info.serialization_alias) for info in FailureHeaders.model_fields.values()
)

_CARD_LIKE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "****" + digits[-4:] if _luhn_ok(digits) else match.group(0)


def sanitize_text(text: str, limit: int = _MAX_HEADER_TEXT) -> str:
    """Text fit for a header from a foreign source (API error details): control characters become
    spaces, Luhn-valid 13-19 digit runs are masked to their last four digits, the length is capped."""
    text = _CARD_LIKE.sub(_mask, _CONTROL.sub(" ", text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def replay_count_of(headers: Sequence[Header]) -> int:
    """The record's ``kard-bridge.replay-count`` (last occurrence), 0 when absent or unreadable."""
    count = 0
    for name, raw in headers:
        if name == HEADER_REPLAY_COUNT:
            # Kafka header values may be null (aiokafka yields None): unreadable, so 0, never a crash.
            text = raw.decode("ascii", errors="replace") if raw is not None else ""
            count = int(text) if text.isdigit() and len(text) < 10 else 0
    return count


def failure_headers_for(
    record: SourceRecord,
    error: BridgeError,
    *,
    attempts: int,
    first_failure_at: datetime,
    last_failure_at: datetime,
    bridge_version: str,
    bridge_instance: str | None = None,
    item: MappedItem | None = None,
) -> FailureHeaders:
    """The failure headers for ``record`` that ended with ``error``.

    ``RecordError`` keeps its own reason and class. ``RejectedError`` (and any non-transient
    ``DeliveryError``) becomes class ``rejected`` with reason ``http_<status>`` (``api_rejected``
    without a status). A ``TransientDeliveryError`` reaching this point means the retry budget ran
    out: reason and class ``retries_exhausted``.

    Raises:
        TypeError: ``error`` is not a per-record failure (e.g. ``OutputError``, ``ConfigError``).
    """
    pointer = http_status = api_detail = api_pointer = None
    if isinstance(error, RecordError):
        reason, reason_class, message, pointer = (
            error.reason,
            ReasonClass(error.reason_class),
            error.message,
            error.pointer,
        )
    elif isinstance(error, TransientDeliveryError):
        reason, reason_class = "retries_exhausted", ReasonClass.RETRIES_EXHAUSTED
        message, http_status, api_detail, api_pointer = error.message, error.status, error.detail, error.pointer
    elif isinstance(error, RejectedError | DeliveryError):
        reason = f"http_{error.status}" if error.status else "api_rejected"
        reason_class = ReasonClass.REJECTED
        message, http_status, api_detail, api_pointer = error.message, error.status, error.detail, error.pointer
    else:
        raise TypeError(f"{type(error).__name__} is not a per-record failure")
    return FailureHeaders(
        reason=reason,
        reason_class=reason_class,
        message=sanitize_text(message),
        pointer=sanitize_text(pointer) if pointer else None,
        http_status=http_status if http_status and 100 <= http_status <= 599 else None,
        api_detail=sanitize_text(api_detail) if api_detail else None,
        api_pointer=sanitize_text(api_pointer) if api_pointer else None,
        attempts=attempts,
        first_failure_at=first_failure_at,
        last_failure_at=last_failure_at,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_timestamp=record.timestamp_ms,
        event_id=(item.event_id or None) if item is not None else None,
        item_id=item.item_id if item is not None else None,
        route=item.route.endpoint if item is not None else None,
        bridge_version=bridge_version,
        bridge_instance=bridge_instance,
        replay_count=replay_count_of(record.headers),
    )


def build_failure_headers(record: SourceRecord, failure: FailureHeaders) -> tuple[Header, ...]:
    """The failure record's headers: the input's own headers, byte for byte, then ``failure``'s."""
    return record.headers + failure.to_headers()
