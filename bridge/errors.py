"""The one error module: every error the bridge raises on purpose, and whether retrying can help.

Tree::

    BridgeError                       retryable = False
    ├── ConfigError                   bad settings, raised at start
    ├── RecordError                   one input record cannot be forwarded; never retried, goes to the DLQ
    │   ├── DecodeError               bytes are not a JSON object we accept (encoding, syntax, NaN, depth...)
    │   ├── SchemaError               JSON is well formed but not a valid event (missing/wrong fields...)
    │   └── MappingError              a valid event cannot become a Kard item (e.g. unsafe id in a path)
    ├── DeliveryError                 the Kard API did not accept a request or an item
    │   ├── TransientDeliveryError    retryable = True; carries retry_after (seconds) when the API said so
    │   ├── RejectedError             a 4xx or a per-item 207 failure: permanent for that item
    │   └── AuthError                 credentials refused even after one token refresh: pause, never DLQ
    └── OutputError                   a result/failure record could not be produced to Kafka

Retry code reads ``exc.retryable`` and ``exc.retry_after``; it never walks a type ladder. Every
``RecordError`` carries a stable machine-readable ``reason`` (it becomes the failure record's reason
header) and a human message that never contains field *values* (card data must not leak into logs).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthError",
    "BridgeError",
    "ConfigError",
    "DecodeError",
    "DeliveryError",
    "MappingError",
    "OutputError",
    "RecordError",
    "RejectedError",
    "SchemaError",
    "TransientDeliveryError",
]


class BridgeError(Exception):
    """Base of every error the bridge raises deliberately."""

    retryable: ClassVar[bool] = False


class ConfigError(BridgeError):
    """The settings are invalid; raised once at start with a message naming the setting."""


class RecordError(BridgeError):
    """One record cannot be forwarded. ``reason`` is a stable snake_case code such as ``malformed_json``."""

    reason_class: ClassVar[str] = "record"

    def __init__(self, reason: str, message: str, *, pointer: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.pointer = pointer  # JSON pointer / field path inside the event, never a value


class DecodeError(RecordError):
    """The record's bytes are not a JSON object the bridge accepts."""

    reason_class = "decode"


class SchemaError(RecordError):
    """The JSON is well formed but is not a valid event of the topic's schema."""

    reason_class = "schema"


class MappingError(RecordError):
    """A valid event cannot be turned into a Kard item."""

    reason_class = "mapping"


class DeliveryError(BridgeError):
    """The Kard API did not accept a request or an item."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        pointer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail
        self.pointer = pointer


class TransientDeliveryError(DeliveryError):
    """Connection errors, timeouts, 408, 429, 5xx: worth retrying, after ``retry_after`` if given."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        pointer: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail, pointer=pointer)
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """The API refused the item for good (4xx, or a per-item error in a 207)."""


class AuthError(DeliveryError):
    """The API refused our credentials even after one token refresh; the bridge pauses, never dead-letters."""


class OutputError(BridgeError):
    """A result or failure record could not be produced to Kafka."""

    retryable = True
