"""Log-leak test (issue 4, PITFALLS §6.5 item 3): the real bridge process at DEBUG leaks no PAN, secret or token.

One ``kard-bridge run`` child process (stdout and stderr captured to one file) goes through every path with
known test card numbers in free-text fields and in wrong-typed fields of poison records: successful delivery,
a per-item 4xx rejection, 503 and 429 retries, mapper errors and the DLQ, a 401 after the sandbox expired every
token (refresh), and a SIGTERM shutdown. Then every captured line is scanned for Luhn-valid 13–19 digit runs
(spaces and dashes allowed), the client secret, bearer tokens and ``access_token`` values; the DLQ record
headers go through the same PAN scan (DLQ values keep the original payload by design: PCI storage).
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import orjson
import pytest

from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeProcessFactory,
    BridgeTopics,
    Message,
    produce,
    read_records,
    wait_committed_to_end,
    wait_until,
)
from tests.fixtures.sandbox import SandboxFactory

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if _luhn_ok(body + d))


PAN_VISA = "4111111111111111"
PAN_MC = "5555555555554444"
PAN_19 = _with_check_digit("622202000000000001")  # 19 digits, Luhn-valid
PAN_AMEX = "378282246310005"  # 15 digits
KNOWN_PANS = (PAN_VISA, PAN_MC, PAN_19, PAN_AMEX)
assert all(_luhn_ok(p) for p in KNOWN_PANS) and len(PAN_19) == 19

_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d)*")
_BEARER = re.compile(r"(?i)bearer\s+(?!\[REDACTED\])[A-Za-z0-9\-._~+/]{20,}")
_ACCESS_TOKEN_VALUE = re.compile(r"""(?i)access_token["']?\s*[:=]\s*["']?(?!\[REDACTED\])[^"'\s,}\]]+""")
_SANDBOX_TOKEN = re.compile(r"sbx_[A-Za-z0-9_-]{16,}")


def _epoch_millis(run: str) -> bool:
    """A bare 13-digit run within ten years of now in epoch milliseconds (record timestamps), not a PAN."""
    return run.isdigit() and len(run) == 13 and abs(int(run) - time.time() * 1000) < 10 * 365 * 86_400_000


def pan_findings(text: str) -> list[str]:
    """Luhn-valid 13–19 digit runs (with single spaces or dashes) and any known test PAN, however split."""
    found = []
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if _epoch_millis(match.group(0)):
            continue
        if (13 <= len(digits) <= 19 and _luhn_ok(digits)) or any(pan in digits for pan in KNOWN_PANS):
            found.append(match.group(0))
    squeezed = re.sub(r"(?<=\d)[ -](?=\d)", "", text)  # a PAN split by any single separators
    found.extend(f"split {pan}" for pan in KNOWN_PANS if pan in squeezed and not found)
    return found


def test_scanner_catches_the_variants() -> None:
    """The scanner itself: plain, spaced, dashed and 19-digit PANs are found; masks and short numbers are not."""
    for text in (PAN_VISA, "5555 5555 5555 4444", "4111-1111-1111-1111", f"x{PAN_19}y", f'"{PAN_AMEX}"'):
        assert pan_findings(text), text
    now_ms = str(int(time.time() * 1000) // 10 * 10)
    now_ms = next(now_ms[:-1] + d for d in "0123456789" if _luhn_ok(now_ms[:-1] + d))  # a Luhn-valid timestamp
    for text in ("****1111", "2025-01-02T03:04:05Z", "offset 123456789012", "4111111111111112", now_ms):
        assert not pan_findings(text), text


def _txn(event_id: str, user: str, **fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "schema_version": 1,
        "event_type": "transaction",
        "event_id": event_id,
        "user_id": user,
        "transaction_id": f"txn-{event_id}",
        "status": "APPROVED",
        "amount_cents": 1250,
        "currency": "USD",
        "description": f"CARD {PAN_VISA}",
        "description_2": "5555 5555 5555 4444",
        "card_bin": "411111",
        "card_last_four": "1111",
        "direction": "DEBIT",
        "authorization_date": "2025-01-02T03:04:05Z",
    }
    event.update(fields)
    return event


def _messages(topics: BridgeTopics, tag: str, phase: str) -> tuple[list[Message], int]:
    """Valid events with PANs in free text, items the sandbox rejects, and poison records; and the DLQ count."""
    topic = topics.transactions
    out: list[Message] = []

    def add(value: bytes, key: str, origin: bytes = b"valid") -> None:
        out.append(Message(topic, key.encode(), value, (("origin", origin),)))

    for i in range(12):
        user = f"u-{tag}-{i % 4}"
        desc2 = {0: "5555 5555 5555 4444", 1: f"REF {PAN_19}", 2: "4111-1111-1111-1111"}[i % 3]
        add(orjson.dumps(_txn(f"ok-{tag}-{phase}-{i}", user, description_2=desc2)), user)
    rejected = 0
    for i in range(3):  # the sandbox rejects these by id prefix (a 207 per-item 400)
        user = f"u-{tag}-r{i}"
        add(orjson.dumps(_txn(f"rej-{tag}-{phase}-{i}", user, description=f"REJECT {PAN_MC}")), user)
        rejected += 1
    poison: list[bytes] = [
        orjson.dumps(_txn(f"p1-{phase}", "u-p", amount_cents=PAN_VISA)),  # string where an int belongs
        orjson.dumps(_txn(f"p2-{phase}", "u-p", currency=int(PAN_MC))),  # int where a string belongs
        orjson.dumps(_txn(f"p3-{phase}", int(PAN_19))),  # 19-digit PAN as the user id
        orjson.dumps(_txn(f"p4-{phase}", "u-p", status=f"PAN {PAN_AMEX}")),  # not one of the enum values
        orjson.dumps(_txn(f"p5-{phase}", "u-p", card_number=PAN_VISA, cvv="987")),  # unknown fields
        orjson.dumps(_txn(f"p6-{phase}", "u-p", authorization_date=f"{PAN_MC}")),  # not a date
        f'{{"event_type":"transaction","description":"{PAN_VISA}"'.encode(),  # truncated JSON
        f"card {PAN_MC} not json at all".encode(),
    ]
    for value in poison:
        add(value, "u-p", b"invalid")
    return out, rejected + len(poison)


async def test_debug_logs_and_dlq_headers_carry_no_pan_secret_or_token(
    kafka_bootstrap: str,
    bridge_topics: BridgeTopics,
    bridge_process: BridgeProcessFactory,
    sandbox_factory: SandboxFactory,
) -> None:
    """Every path at DEBUG, then every captured line and every DLQ header is scanned."""
    secret = f"LeakCheck-{uuid.uuid4().hex}"
    sandbox: SandboxProcess = sandbox_factory(client_secret=secret)
    tag = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=sandbox.base_url, trust_env=False) as http:
        response = await http.post("v2/auth/token", json={"client_id": sandbox.client_id, "client_secret": secret})
        response.raise_for_status()
        sample_token = response.json()["access_token"]

    retry_after = {"seconds": 0.1}
    sandbox.control.set_faults(
        {
            "seed": 11,
            "rules": [
                {"endpoint": "transactions", "reject_items": {"prefix": "rej-", "fields": ["id"]}},
                {"endpoint": "transactions", "error_rates": {"503": 1.0}, "times": 2, "retry_after": retry_after},
                {
                    "endpoint": "transactions",
                    "after": 2,
                    "error_rates": {"429": 1.0},
                    "times": 2,
                    "retry_after": retry_after,
                },
            ],
        }
    )
    first, dlq_first = _messages(bridge_topics, tag, "a")
    await produce(kafka_bootstrap, first)
    group = f"logleak-{tag}"
    proc = bridge_process(sandbox, group_id=group, bridge={"log_level": "DEBUG", "linger": 0.1})
    await wait_until(lambda: proc.check() or proc.assignment(), 60, what="partition assignment")
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 60, alive=proc.check)

    # A 401 on the next request: every token the bridge holds is expired, so it must refresh and retry.
    assert sandbox.control.expire_tokens() >= 1
    second, dlq_second = _messages(bridge_topics, tag, "b")
    await produce(kafka_bootstrap, second)
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 60, alive=proc.check)

    assert await proc.terminate(60) == 0, proc.log_tail()

    # -- the paths were taken -------------------------------------------------------------------------------
    requests = sandbox.control.requests("transactions")
    statuses = {int(r["status"]) for r in requests if "status" in r}
    assert {207, 503, 429, 401} <= statuses, statuses
    token_ok = sandbox.control.stats()["requests"].get("token", {})
    assert int(token_ok.get("200", token_ok.get(200, 0))) >= 3, f"sample + first token + refresh: {token_ok}"
    dlq = await read_records(kafka_bootstrap, [BridgeTopics.dlq(bridge_topics.transactions)])
    assert len(dlq) == dlq_first + dlq_second, f"DLQ holds {len(dlq)}"
    results = await read_records(kafka_bootstrap, [BridgeTopics.results(bridge_topics.transactions)])
    assert len(results) == 24

    # -- the scan -------------------------------------------------------------------------------------------
    lines = proc.log_path.read_text(errors="replace").splitlines()
    assert any('"level":"debug"' in line for line in lines), "DEBUG lines were captured"
    events = [orjson.loads(line).get("event") for line in lines if line.startswith("{")]
    assert events.count("record_dead_lettered") == len(dlq), "every dead-lettering was logged (and scanned)"
    assert {"batch_send_failed", "kard_token_rejected", "kard_token_refreshed", "bridge_drained"} <= set(events)
    leaks: list[str] = []
    for n, line in enumerate(lines, 1):
        problems = pan_findings(line)
        if secret in line:
            problems.append("client secret")
        if sample_token in line or _SANDBOX_TOKEN.search(line):
            problems.append("sandbox token")
        problems += _BEARER.findall(line) + _ACCESS_TOKEN_VALUE.findall(line)
        if problems:
            leaks.append(f"line {n}: {problems}: {line[:400]}")
    assert not leaks, "\n".join(leaks[:20])

    header_leaks = [
        f"{r.partition}/{r.offset} {name}: {pan_findings(value.decode(errors='replace'))}"
        for r in dlq
        for name, value in r.headers
        if pan_findings(value.decode(errors="replace")) or secret.encode() in value
    ]
    assert not header_leaks, "\n".join(header_leaks)
