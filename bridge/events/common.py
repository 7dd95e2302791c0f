"""Shared building blocks of the input events: field types, the event envelope and the event kinds.

Every leaf field of an event is an ``Annotated`` alias that carries exactly one :class:`Leaf`: a
check function plus the JSON Schema that describes what the check accepts. Pydantic calls the check
when a model is validated (and emits the schema into ``topics/schemas/``), and the per-record
validator in :mod:`bridge.events.validation` calls the *same* function on plain dicts. So the
models, the generated schemas and the fast path cannot drift apart: there is one definition of what
a value may be, and ``tests/unit/test_schemas_in_sync.py`` checks the rest.

A check raises :class:`~bridge.errors.SchemaError` with a stable ``reason`` and a message that never
contains the value (card data must not reach logs or failure headers); the caller adds the pointer.
Checks return the normalised value: timestamps become aware UTC ``datetime`` objects.

Field rules chosen here (the contract leaves them open) and why:

* identifiers are 1-255 printable characters (they end up in URLs, logs and result records);
* free text is 1-1024 characters without NUL (Kard states no limit; the cap bounds request size);
* money is an integer number of cents, ``0 <= n <= 2**53 - 1`` (exact in every JSON consumer);
  booleans, floats (even ``10.0``) and strings are refused: the unit must be unambiguous;
* timestamps are RFC 3339 with ``T`` and a zone (``Z`` or ``±hh:mm``); up to 9 fractional digits are
  accepted and truncated to microseconds. A timestamp without zone is ``naive_datetime``: the SDK
  would silently apply the *host's* zone, which is how wrong dates reach Kard;
* ``card_bin`` accepts 6 to 8 digits (BINs are moving to 8 digits) and the mapping sends the first
  6 as the contract asks. More than 8 digits is refused: that is no BIN, it may be a full PAN.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic import model_validator as _model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from bridge.errors import SchemaError

__all__ = [
    "MAX_CENTS",
    "MAX_ID_LENGTH",
    "MAX_TEXT_LENGTH",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "CardBin",
    "CardLastFour",
    "CardNetwork",
    "Cents",
    "CurrencyCode",
    "Direction",
    "EventKind",
    "EventModel",
    "Identifier",
    "Latitude",
    "Leaf",
    "Longitude",
    "Mcc",
    "SchemaVersion",
    "StrictModel",
    "Text",
    "Timestamp",
    "UsState",
    "check_schema_version",
    "enum_leaf",
    "format_utc",
    "utc_text",
]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})

MAX_ID_LENGTH = 255
MAX_TEXT_LENGTH = 1024
MAX_CENTS = 2**53 - 1


class EventKind(enum.StrEnum):
    """What an input topic carries; the catalogue assigns one kind per topic."""

    CARD_TRANSACTION = "card_transaction"
    ELIGIBILITY = "eligibility"
    ATTRIBUTION = "attribution"


@dataclass(frozen=True, eq=False, slots=True)
class Leaf:
    """One field type: ``check`` validates and normalises a value, ``json_schema`` describes it.

    Used as ``Annotated[T, Leaf(...)]``. Pydantic runs ``check`` as a plain validator (it replaces
    pydantic's own coercion entirely, so lax-mode surprises such as ``"10"`` → ``10`` or an integer
    read as a Unix timestamp cannot happen) and uses ``json_schema`` verbatim.
    """

    check: Callable[[Any], Any]
    json_schema: Mapping[str, Any]
    #: A hint for the per-record validator, which inlines the accept test of these kinds to save a
    #: call per field: ``"identifier"``, ``"text"``, ``"cents"``, ``"enum"`` (values in ``allowed``)
    #: or ``""`` (always call ``check``). Rejections always come from ``check``. ``"timestamp"`` lets
    #: a projection that sends the value with ``format_utc`` call :func:`utc_text` instead.
    kind: str = ""
    allowed: frozenset[str] = frozenset()

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        check = self.check

        def validate(value: Any) -> Any:
            try:
                return check(value)
            except SchemaError as exc:
                raise PydanticCustomError(exc.reason, exc.message) from None

        return core_schema.no_info_plain_validator_function(validate)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.json_schema)


def _fail(reason: str, message: str) -> SchemaError:
    return SchemaError(reason, message)


def _check_identifier(value: Any) -> str:
    if type(value) is not str:
        raise _fail("wrong_type", "must be a string")
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise _fail("invalid_field", f"must be 1 to {MAX_ID_LENGTH} characters long")
    if not value.isprintable():
        raise _fail("invalid_field", "must contain printable characters only")
    return value


def _check_text(value: Any) -> str:
    if type(value) is not str:
        raise _fail("wrong_type", "must be a string")
    if not 0 < len(value) <= MAX_TEXT_LENGTH:
        raise _fail("invalid_field", f"must be 1 to {MAX_TEXT_LENGTH} characters long")
    if "\x00" in value:
        raise _fail("invalid_field", "must not contain NUL characters")
    return value


def _check_cents(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_CENTS:
        raise _fail("invalid_amount", "must be a non-negative integer number of cents (at most 2**53 - 1)")
    return value


_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"


def _check_timestamp(value: Any) -> datetime:
    if type(value) is not str:
        raise _fail("wrong_type", "must be an RFC 3339 date-time string")
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        raise _fail("invalid_datetime", "must be an RFC 3339 date-time such as 2025-01-02T03:04:05Z")
    if match.group(1) is None:
        raise _fail("naive_datetime", "must carry a zone: Z or +hh:mm / -hh:mm")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _fail("invalid_datetime", "is not a real point in time (check the date, time and offset)") from None


def utc_text(value: Any) -> str:
    """``format_utc`` of a checked timestamp in one step: the text a valid timestamp is sent as.

    Text already in that form (``2025-01-02T03:04:05Z``: UTC, no fraction) is returned as it is once it
    is known to name a real point in time, which skips building, converting and formatting a datetime
    for the commonest input. Anything else takes the full check and conversion, so what is accepted,
    and every rejection, is exactly the timestamp check's.

    Raises:
        SchemaError: as the timestamp check does.
    """
    if type(value) is str and len(value) == 20 and value[19] == "Z" and _TIMESTAMP.fullmatch(value) is not None:
        try:
            datetime.fromisoformat(value)
        except (ValueError, OverflowError):
            pass  # not a real date or time: the full check below says so
        else:
            return value
    return format_utc(_check_timestamp(value))


def format_utc(value: datetime) -> str:
    """Render an aware datetime the way the SDK does for UTC: ``2025-01-02T03:04:05Z``.

    Fractional seconds appear only when the microseconds are non-zero (``...05.450000Z``).
    """
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def _digits(lengths: tuple[int, ...], what: str) -> Callable[[Any], str]:
    allowed = frozenset(lengths)
    span = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]} to {lengths[-1]}"

    def check(value: Any) -> str:
        if type(value) is not str:
            raise _fail("wrong_type", "must be a string of digits")
        if len(value) not in allowed or not (value.isascii() and value.isdigit()):
            raise _fail("invalid_field", f"must be {span} ASCII digits ({what})")
        return value

    return check


def _check_currency(value: Any) -> str:
    if type(value) is not str:
        raise _fail("wrong_type", "must be a string")
    if len(value) != 3 or not (value.isascii() and value.isalpha() and value.isupper()):
        raise _fail("invalid_field", "must be an ISO 4217 code: three upper-case letters such as USD")
    return value


_DECIMAL = re.compile(r"-?[0-9]{1,3}(?:\.[0-9]{1,15})?")


def _coordinate(limit: int, what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is not str:
            raise _fail("wrong_type", "must be a decimal string (the API sends coordinates as strings)")
        if _DECIMAL.fullmatch(value) is None or abs(float(value)) > limit:
            raise _fail("invalid_field", f"must be a decimal {what} between -{limit} and {limit}")
        return value

    return check


def enum_leaf(values: tuple[str, ...]) -> Leaf:
    """A leaf accepting exactly ``values`` (case-sensitive strings, as the contract spells them)."""
    allowed = frozenset(values)
    listed = ", ".join(values) if len(values) <= 8 else f"the {len(values)} values listed in the contract"
    message = f"must be one of {listed}"

    def check(value: Any) -> str:
        if type(value) is not str:
            raise _fail("wrong_type", "must be a string")
        if value not in allowed:
            raise _fail("invalid_enum", message)
        return value

    return Leaf(check, {"type": "string", "enum": list(values)}, kind="enum", allowed=allowed)


def _string_schema(min_length: int, max_length: int, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": min_length, "maxLength": max_length, **extra}


Identifier = Annotated[
    str,
    Leaf(_check_identifier, _string_schema(1, MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"), kind="identifier"),
]
Text = Annotated[str, Leaf(_check_text, _string_schema(1, MAX_TEXT_LENGTH), kind="text")]
Cents = Annotated[int, Leaf(_check_cents, {"type": "integer", "minimum": 0, "maximum": MAX_CENTS}, kind="cents")]
Timestamp = Annotated[
    datetime,
    Leaf(_check_timestamp, {"type": "string", "format": "date-time", "pattern": _TIMESTAMP_PATTERN}, kind="timestamp"),
]
CurrencyCode = Annotated[str, Leaf(_check_currency, {"type": "string", "pattern": "^[A-Z]{3}$"})]
Mcc = Annotated[str, Leaf(_digits((4,), "merchant category code"), {"type": "string", "pattern": "^[0-9]{4}$"})]
CardBin = Annotated[
    str, Leaf(_digits((6, 7, 8), "bank identification number"), {"type": "string", "pattern": "^[0-9]{6,8}$"})
]
CardLastFour = Annotated[
    str, Leaf(_digits((4,), "last four digits of the card"), {"type": "string", "pattern": "^[0-9]{4}$"})
]
_COORDINATE_PATTERN = r"^-?[0-9]{1,3}(\.[0-9]{1,15})?$"
Latitude = Annotated[str, Leaf(_coordinate(90, "latitude"), {"type": "string", "pattern": _COORDINATE_PATTERN})]
Longitude = Annotated[str, Leaf(_coordinate(180, "longitude"), {"type": "string", "pattern": _COORDINATE_PATTERN})]

DirectionValue = Literal["DEBIT", "CREDIT"]
Direction = Annotated[DirectionValue, enum_leaf(get_args(DirectionValue))]
CardNetworkValue = Literal["VISA", "MASTERCARD", "AMERICANEXPRESS", "DISCOVER"]
CardNetwork = Annotated[CardNetworkValue, enum_leaf(get_args(CardNetworkValue))]
UsStateValue = Literal[
    "AL", "AK", "AS", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FM", "FL", "GA", "GU", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MH", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "MP", "OH", "OK", "OR", "PW", "PA", "PR", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VI",
    "VA", "WA", "WV", "WI", "WY",
]  # fmt: skip
UsState = Annotated[UsStateValue, enum_leaf(get_args(UsStateValue))]


def check_schema_version(value: Any) -> int:
    """The envelope's first check: an integer (not a boolean) this bridge knows."""
    if type(value) is not int:
        raise _fail("wrong_type", "must be an integer")
    if value not in SUPPORTED_SCHEMA_VERSIONS:
        raise _fail("unknown_schema_version", "is not a schema version this bridge supports (1)")
    return value


SchemaVersion = Annotated[Literal[1], Leaf(check_schema_version, {"type": "integer", "const": SCHEMA_VERSION})]


class StrictModel(BaseModel):
    """Base of every event model and nested object: frozen, unknown fields refused (``unknown_field``).

    Refusing unknown fields catches misspellings (``card_bim``) that would otherwise drop data
    silently; a new field means a new ``schema_version`` or a mapping hook.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def event_rules(cls, values: Mapping[str, Any]) -> None:
        """Cross-field rules (conditional requirements); ``values`` maps field names to values or None.

        Raises:
            SchemaError: with ``pointer`` set to the offending field.
        """

    @_model_validator(mode="after")
    def _apply_event_rules(self) -> Self:
        try:
            type(self).event_rules(self.__dict__)
        except SchemaError as exc:
            raise PydanticCustomError(exc.reason, exc.message) from None
        return self


class EventModel(StrictModel):
    """The envelope every input event shares; subclasses narrow ``event_type`` to one literal."""

    #: Which topic kind this event belongs to (set by each subclass).
    kind: ClassVar[EventKind]

    schema_version: SchemaVersion = Field(
        description="Version of the event schema. Only 1 exists; other values are refused."
    )
    event_type: str = Field(description="Discriminator: which event this is.")
    event_id: Identifier = Field(
        description="The issuer's unique id for this event (a retry of the same event keeps it)."
    )
    organization_id: Identifier | None = Field(
        default=None,
        description="The issuer's organization id on Kard; defaults to the bridge's configured one.",
    )
