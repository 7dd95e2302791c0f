"""Deterministic, realistic input events for the demo, the integration tests and the benchmarks.

Mostly card transactions (an APPROVED event, then usually a SETTLED event for the same transaction,
so per-key order matters), some matched transactions and fraud markers, eligibility changes and
offer/notification attributions, spread over a pool of users (the record key is the user id). Events
carry a sequence number in their ``event_id`` (``<prefix>-<seq>-...``) so checkers can match every
input to its outcome. Sizes are close to what issuers send: 350–900 bytes per transaction.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

__all__ = ["GeneratedEvent", "TopicNames", "generate_events", "invalid_examples"]

_MERCHANTS = (
    ("ADVANCEAUTO", "5533", "PA", "Philadelphia"),
    ("BLUE BOTTLE COFFEE", "5814", "CA", "Oakland"),
    ("WHOLE FOODS", "5411", "TX", "Austin"),
    ("SHELL OIL", "5541", "NY", "Brooklyn"),
    ("TARGET", "5310", "MN", "Minneapolis"),
)
_NETWORKS = ("VISA", "MASTERCARD", "AMERICANEXPRESS", "DISCOVER")


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Where each kind of event goes."""

    transactions: str = "kard.card-transactions"
    eligibility: str = "kard.eligibility"
    attributions: str = "kard.attributions"


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One event ready to produce: topic, key (user id), value bytes, and its identity for checks."""

    topic: str
    key: bytes
    value: bytes
    event_id: str
    event_type: str
    user_id: str


def _ts(base: int, offset_s: int) -> str:
    # Fixed epoch base keeps the output deterministic; format as UTC with a zone.
    secs = base + offset_s
    days, rem = divmod(secs, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    # 2025-01-01 + days (month-agnostic: keep within January..December by modulo 28-day months)
    month = 1 + (days // 28) % 12
    day = 1 + days % 28
    return f"2025-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{seconds:02d}Z"


def generate_events(
    count: int,
    *,
    users: int = 2000,
    seed: int = 7,
    prefix: str = "gen",
    topics: TopicNames | None = None,
    organization_id: str | None = None,
) -> Iterator[GeneratedEvent]:
    """Yield ``count`` valid events (about 80 % transactions, 10 % eligibility, 10 % attributions)."""
    names = topics or TopicNames()
    rng = random.Random(seed)
    open_txns: list[tuple[str, str, dict[str, object]]] = []  # (user, txn id, approved event) awaiting SETTLED
    for seq in range(count):
        user = f"user-{rng.randrange(users):06d}"
        roll = rng.random()
        event_id = f"{prefix}-{seq:09d}"
        common: dict[str, object] = {"schema_version": 1, "event_id": event_id}
        if organization_id:
            common["organization_id"] = organization_id
        if roll < 0.80:
            topic = names.transactions
            if open_txns and rng.random() < 0.45:
                user, _txn, approved = open_txns.pop(rng.randrange(len(open_txns)))
                event = {**approved, **common, "status": "SETTLED", "settled_date": _ts(3600, seq)}
                event_type = "transaction"
            elif rng.random() < 0.05:
                event = {**common, "event_type": "fraud_marker", "user_id": user, "transaction_id": f"t-{seq}"}
                event_type = "fraud_marker"
            elif rng.random() < 0.08:
                event = {
                    **common,
                    "event_type": "matched_transaction",
                    "user_id": user,
                    "transaction_id": f"t-{seq}",
                    "amount_cents": rng.randrange(100, 50_000),
                    "description": _MERCHANTS[seq % len(_MERCHANTS)][0],
                    "authorization_date": _ts(0, seq),
                    "payment_type": "CARD",
                    "card_bin": "411111",
                    "card_last_four": f"{rng.randrange(10_000):04d}",
                    "matched_offer_id": f"offer-{rng.randrange(50)}",
                    "direction": "DEBIT",
                    "receipt_medium": "ELECTRONIC",
                }
                event_type = "matched_transaction"
            else:
                name, mcc, state, city = _MERCHANTS[rng.randrange(len(_MERCHANTS))]
                amount = rng.randrange(100, 50_000)
                event = {
                    **common,
                    "event_type": "transaction",
                    "user_id": user,
                    "transaction_id": f"t-{seq}",
                    "status": "APPROVED",
                    "amount_cents": amount,
                    "subtotal_cents": amount - amount // 10,
                    "currency": "USD",
                    "description": f"{name} #{rng.randrange(1000)}",
                    "mcc": mcc,
                    "authorization_date": _ts(0, seq),
                    "merchant": {
                        "id": f"{rng.randrange(10**14, 10**15)}",
                        "name": name,
                        "addr_city": city,
                        "addr_state": state,
                        "addr_country": "United States",
                    },
                    "card_bin": "411111",
                    "card_last_four": f"{rng.randrange(10_000):04d}",
                    "direction": "DEBIT",
                    "payment_type": "CARD",
                    "card_network": _NETWORKS[rng.randrange(len(_NETWORKS))],
                    "retrieval_reference_number": f"{rng.randrange(10**11, 10**12)}",
                }
                event_type = "transaction"
                if len(open_txns) < 10_000:
                    open_txns.append((user, f"t-{seq}", {k: v for k, v in event.items() if k != "event_id"}))
        elif roll < 0.90:
            topic = names.eligibility
            event_type = "segment_user"
            event = {
                **common,
                "event_type": event_type,
                "user_id": user,
                "segment_id": f"seg-{rng.randrange(20)}",
                "status": "ACTIVE" if rng.random() < 0.7 else "INACTIVE",
                "event_time": _ts(0, seq),
            }
        else:
            topic = names.attributions
            offer = rng.random() < 0.8
            event_type = "offer_attribution" if offer else "notification_attribution"
            event = {
                **common,
                "event_type": event_type,
                "user_id": user,
                "entity_id": f"{'offer' if offer else 'notif'}-{rng.randrange(200)}",
                "event_code": "VIEW" if rng.random() < 0.5 else "IMPRESSION",
                "medium": rng.choice(("BROWSE", "EMAIL", "MAP", "SEARCH")) if offer else "PUSH",
                "event_date": _ts(0, seq),
            }
        user_id = str(event["user_id"])
        yield GeneratedEvent(topic, user_id.encode(), orjson.dumps(event), event_id, event_type, user_id)


def invalid_examples(topics: TopicNames | None = None) -> Iterator[tuple[str, bytes]]:
    """The catalogue's invalid example lines, as (topic, value) with the default topic mapped to ``topics``."""
    from pathlib import Path

    names = topics or TopicNames()
    mapping = {
        "kard.card-transactions": names.transactions,
        "kard.eligibility": names.eligibility,
        "kard.attributions": names.attributions,
    }
    root = Path(__file__).resolve().parents[2] / "topics" / "examples"
    for default, topic in mapping.items():
        path = root / f"{default}.invalid.jsonl"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                yield topic, line
