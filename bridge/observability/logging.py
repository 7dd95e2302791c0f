"""structlog configured once: JSON lines on stdout, UTC ISO timestamps, and redaction before rendering.

The redaction processor sits immediately before the renderer so no call site can skip it (PITFALLS
§6.4). It masks Luhn-valid 13–19 digit runs (card numbers, also with spaces or dashes) to
``****<last4>``, bearer tokens, and the values of secret-looking keys, walking nested dicts, lists
and rendered tracebacks. Tracebacks are rendered without local variables (structlog's default shows
locals, which would put decoded payloads into logs). httpx/httpcore request logging is clamped to
WARNING (it logs full URLs at INFO) and aiokafka to INFO.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["configure_logging", "redact", "redact_text"]

_PAN_RE = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*")
_SECRET_KV_RE = re.compile(
    r"(?i)((?:client_secret|access_token|refresh_token|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\"'\s,&}]+"
)
_SECRET_KEYS = frozenset(
    {"client_secret", "access_token", "refresh_token", "password", "authorization", "token", "secret"}
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_pan(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = "".join(c for c in raw if c.isdigit())
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return "****" + digits[-4:]
    return raw


def redact_text(text: str) -> str:
    """Mask card numbers, bearer tokens and ``secret=value`` pairs inside free text."""
    if not text:
        return text
    text = _PAN_RE.sub(_mask_pan, text)
    text = _BEARER_RE.sub(r"\1[REDACTED]", text)
    return _SECRET_KV_RE.sub(r"\1[REDACTED]", text)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "[TOO DEEP]"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {
            k: ("[REDACTED]" if str(k).lower() in _SECRET_KEYS else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(repr(value))


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact every value of the event, nested structures and tracebacks included."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "[REDACTED]"
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _orjson_dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=repr)


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog and the stdlib loggers of our dependencies; safe to call more than once."""
    numeric = logging.getLevelName(level.upper())
    out: Any = stream or sys.stdout
    pre: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks without local variables (they would hold decoded payloads): a dict for JSON, text for
        # the console renderer.
        structlog.processors.format_exc_info
        if fmt == "console"
        else structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory: Any = structlog.PrintLoggerFactory(file=out)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = structlog.BytesLoggerFactory(file=getattr(out, "buffer", out))
    structlog.configure(
        processors=[*pre, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Third-party stdlib loggers: route through the same redaction, clamp the noisy ones.
    handler = logging.StreamHandler(out)
    handler.setFormatter(_RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name, floor in _CLAMPS:
        logging.getLogger(name).setLevel(max(numeric, floor))


_CLAMPS: Iterable[tuple[str, int]] = (
    ("httpx", logging.WARNING),
    ("httpcore", logging.WARNING),
    ("aiokafka", logging.INFO),
)


class _RedactingFormatter(logging.Formatter):
    """Formats stdlib records as one JSON line, redacted like structlog events."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "logger": record.name,
            "level": record.levelname.lower(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        redacted = redact(None, "", event)
        return orjson.dumps(redacted, default=repr).decode()
