"""Log redaction: card numbers, bearer tokens and secrets never reach the rendered log line."""

from __future__ import annotations

import io
import logging

import orjson
import structlog

from bridge.observability.logging import configure_logging, redact_text

PANS = ["4111111111111111", "5555 5555 5555 4444", "4111-1111-1111-1111", "6011000990139424"]


def test_redact_text_masks_luhn_valid_card_numbers_only() -> None:
    """Luhn-valid 13–19 digit runs (with spaces or dashes) become ****last4; other numbers stay."""
    for pan in PANS:
        masked = redact_text(f"card {pan} used")
        digits = "".join(c for c in pan if c.isdigit())
        assert digits not in masked.replace(" ", "").replace("-", "")
        assert "****" + digits[-4:] in masked
    assert redact_text("order 1234567890123") == "order 1234567890123"  # not Luhn-valid


def test_rendered_events_tracebacks_and_stdlib_logs_are_redacted() -> None:
    """Every rendered JSON line, including exceptions and third-party loggers, is free of PANs and secrets."""
    stream = io.StringIO()
    configure_logging("DEBUG", "console", stream=stream)
    log = structlog.get_logger("t")
    log.info("event_logged", note=f"pan {PANS[0]}", nested={"client_secret": "abc123", "list": [PANS[1]]})
    log.info("header_seen", authorization="Bearer eyJhbGciOi.secret.token")
    try:
        raise ValueError(f"bad card {PANS[2]} client_secret=zzz999")
    except ValueError:
        log.exception("mapping_failed")
    logging.getLogger("aiokafka").warning("pan %s seen", PANS[3])
    text = stream.getvalue()
    for pan in PANS:
        assert "".join(c for c in pan if c.isdigit()) not in text.replace(" ", "").replace("-", "")
    for secret in ("abc123", "eyJhbGciOi.secret.token", "zzz999"):
        assert secret not in text


def test_json_format_renders_one_object_per_line() -> None:
    """The production format is one JSON object per line with a UTC ISO timestamp."""
    stream = io.StringIO()

    class _Buffer(io.BytesIO):
        pass

    buffer = _Buffer()
    configure_logging("INFO", "json", stream=buffer)
    structlog.get_logger("t").info("offsets_committed", partitions=3)
    line = buffer.getvalue().decode().strip().splitlines()[-1]
    event = orjson.loads(line)
    assert event["event"] == "offsets_committed"
    assert event["partitions"] == 3
    assert event["timestamp"].endswith("Z")
    del stream
