"""The benchmark baseline: the Kafka-to-Kard bridge a user would write in an afternoon.

Consume the three input topics with aiokafka (one consumer, defaults, no auto-commit), and for each
``getmany`` poll: ``json.loads`` every value, map it minimally to its Kard item (field renames, no
validation), group the items by request path, POST each group as ``{"data": [...]}`` chunked at the
endpoint's limit (500, 100 for per-user attributions) with all of the poll's requests at once
(``asyncio.gather`` on one ``httpx.AsyncClient``), then commit. No retries beyond httpx's, no result or
dead-letter records, no batching across polls, no backpressure beyond "one poll at a time": a failed
request is counted and its records are skipped. It fetches one OAuth token at start.

Run as its own process (the benchmark does): settings come from the same environment variables as the
bridge (``KAFKA_BOOTSTRAP_SERVERS``, ``KARD_API_BASE_URL``, ``KARD_CLIENT_ID``, ``KARD_CLIENT_SECRET``,
``KARD_ORGANIZATION_ID``, ``BRIDGE_GROUP_ID``, ``BRIDGE_TRANSACTIONS_TOPIC``, ``BRIDGE_ELIGIBILITY_TOPIC``,
``BRIDGE_ATTRIBUTIONS_TOPIC``; an empty topic is not consumed). On SIGTERM it stops after the current
poll and prints one JSON line of counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import defaultdict
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

TRANSACTION_NAMES = {
    "user_id": "userId", "amount_cents": "amount", "subtotal_cents": "subtotal", "status": "status",
    "currency": "currency", "description": "description", "description_2": "description2", "mcc": "mcc",
    "core_provider_id": "coreProviderId", "transaction_date": "transactionDate",
    "authorization_date": "authorizationDate", "settled_date": "settledDate", "merchant": "merchant",
    "card_presence": "cardPresence", "pan_entry_mode": "panEntryMode", "card_bin": "cardBIN",
    "card_last_four": "cardLastFour", "authorization_code": "authorizationCode",
    "retrieval_reference_number": "retrievalReferenceNumber",
    "system_trace_audit_number": "systemTraceAuditNumber", "acquirer_reference_number": "acquirerReferenceNumber",
    "direction": "direction", "payment_type": "paymentType", "card_network": "cardNetwork",
    "transaction_id": "transactionId", "card_product_id": "cardProductId", "user_zip_code": "userZipCode",
    "processor_mids": "processorMids", "matched_offer_id": "matchedOfferId",
    "matched_location_id": "matchedLocationId", "order_id": "orderId", "receipt_medium": "receiptMedium",
}  # fmt: skip
MERCHANT_NAMES = {
    "id": "id", "name": "name", "addr_street": "addrStreet", "addr_city": "addrCity", "addr_state": "addrState",
    "addr_zipcode": "addrZipcode", "addr_country": "addrCountry", "latitude": "latitude",
    "longitude": "longitude", "store_id": "storeId",
}  # fmt: skip
ENVELOPE = {"schema_version", "event_type", "event_id", "organization_id"}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


class Baseline:
    def __init__(self) -> None:
        self.api = _env("KARD_API_BASE_URL", "http://127.0.0.1:8080").rstrip("/")
        self.org = _env("KARD_ORGANIZATION_ID", "org-demo")
        self.topics = {
            "transactions": _env("BRIDGE_TRANSACTIONS_TOPIC", "kard.card-transactions"),
            "eligibility": _env("BRIDGE_ELIGIBILITY_TOPIC", "kard.eligibility"),
            "attributions": _env("BRIDGE_ATTRIBUTIONS_TOPIC", "kard.attributions"),
        }
        self.kind_of = {topic: kind for kind, topic in self.topics.items() if topic}
        self.counts = {"records": 0, "skipped": 0, "requests": 0, "failed_requests": 0, "items_failed": 0}
        self.stopping = False

    def map(self, topic: str, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(request path, Kard item) for one event."""
        kind = self.kind_of[topic]
        org = event.get("organization_id") or self.org
        user = event["user_id"]
        if kind == "transactions":
            if event["event_type"] == "fraud_marker":
                item = {"type": "fraudulentTransaction", "id": event["transaction_id"], "attributes": {"userId": user}}
                return f"v2/issuers/{org}/fraud", item
            attrs = {TRANSACTION_NAMES[k]: v for k, v in event.items() if k not in ENVELOPE}
            if "merchant" in attrs:
                attrs["merchant"] = {MERCHANT_NAMES[k]: v for k, v in attrs["merchant"].items()}
            if "cardBIN" in attrs:
                attrs["cardBIN"] = attrs["cardBIN"][:6]
            wire = "matchedTransaction" if event["event_type"] == "matched_transaction" else "transaction"
            return f"v2/issuers/{org}/transactions", {"type": wire, "id": event["event_id"], "attributes": attrs}
        if kind == "eligibility":
            attrs = {
                "userId": user, "segmentId": event["segment_id"], "status": event["status"],
                "eventTime": event["event_time"], "issuerId": org,
            }  # fmt: skip
            return "internal/eligibility-broker/ingest", {"type": "segmentUser", "attributes": attrs}
        wire = "offerAttribution" if event["event_type"] == "offer_attribution" else "notificationAttribution"
        attrs = {
            "entityId": event["entity_id"], "eventCode": event["event_code"], "medium": event["medium"],
            "eventDate": event["event_date"],
        }  # fmt: skip
        return f"v2/issuers/{org}/users/{user}/attributions", {"type": wire, "attributes": attrs}

    async def token(self, client: httpx.AsyncClient) -> str:
        body = {"client_id": _env("KARD_CLIENT_ID", "sandbox-client"), "client_secret": _env("KARD_CLIENT_SECRET")}
        response = await client.post(f"{self.api}/v2/auth/token", json=body)
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def post(self, client: httpx.AsyncClient, path: str, items: list[dict[str, Any]]) -> None:
        self.counts["requests"] += 1
        try:
            response = await client.post(f"{self.api}/{path}", json={"data": items})
            ok = response.is_success
        except httpx.HTTPError:
            ok = False
        if not ok:
            self.counts["failed_requests"] += 1
            self.counts["items_failed"] += len(items)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: setattr(self, "stopping", True))
        consumer = AIOKafkaConsumer(
            *self.kind_of,
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            group_id=_env("BRIDGE_GROUP_ID", "baseline-bridge"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        async with httpx.AsyncClient(timeout=30.0) as client:
            client.headers["Authorization"] = f"Bearer {await self.token(client)}"
            await consumer.start()
            try:
                while not self.stopping:
                    polled = await consumer.getmany(timeout_ms=500)
                    if not polled:
                        continue
                    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
                    for tp, messages in polled.items():
                        for message in messages:
                            self.counts["records"] += 1
                            try:
                                path, item = self.map(tp.topic, json.loads(message.value))
                            except (ValueError, KeyError, TypeError, AttributeError):
                                self.counts["skipped"] += 1
                                continue
                            groups[path].append(item)
                    requests = []
                    for path, items in groups.items():
                        limit = 100 if path.endswith("/attributions") else 500
                        for start in range(0, len(items), limit):
                            requests.append(self.post(client, path, items[start : start + limit]))
                    await asyncio.gather(*requests)
                    await consumer.commit()
            finally:
                await consumer.stop()
        print(json.dumps(self.counts), flush=True)


def main() -> None:
    asyncio.run(Baseline().run())


if __name__ == "__main__":
    main()
