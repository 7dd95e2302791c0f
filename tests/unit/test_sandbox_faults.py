"""The sandbox's fault engine without a server: decisions from a config, a seed and a fake clock.

The ``reject_items`` tests at the end also serve requests through the sandbox app in process (aiohttp's test
server on a loopback port), because what the option changes is the answer's shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.sandbox.app import create_app
from bridge.sandbox.fault_config import parse_fault_config
from bridge.sandbox.faults import FaultEngine
from bridge.sandbox.state import SandboxSettings, SandboxState


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _engine(document: object, clock: FakeClock | None = None) -> FaultEngine:
    return FaultEngine(parse_fault_config(document), clock=clock or FakeClock())


def test_same_seed_same_decisions() -> None:
    """Two engines with one seed make identical error and latency draws."""
    doc = {"seed": 3, "error_rates": {"500": 0.3}, "latency": {"dist": "uniform", "low": 0.0, "high": 1.0}}
    draws = []
    for engine in (_engine(doc), _engine(doc)):
        decisions = [engine.decide("fraud") for _ in range(50)]
        draws.append([(d.status, d.latency) for d in decisions])
    assert draws[0] == draws[1]
    assert any(status == 500 for status, _ in draws[0]) and any(status is None for status, _ in draws[0])


def test_scope_after_and_times() -> None:
    """A rule touches only its endpoints, skips ``after`` matches and stops after ``times`` hits."""
    engine = _engine({"endpoint": ["fraud"], "error_rates": {"503": 1.0}, "after": 1, "times": 2})
    assert engine.decide("transactions").status is None
    assert [engine.decide("fraud").status for _ in range(5)] == [None, 503, 503, None, None]
    assert _engine({"error_rates": {"500": 1.0}}).decide("token").status is None
    assert _engine({"endpoint": "*", "error_rates": {"500": 1.0}}).decide("token").status == 500


def test_outage_window_follows_the_clock() -> None:
    """An outage starts after ``start_in`` and ends ``duration`` later; Retry-After is the time left."""
    clock = FakeClock()
    engine = _engine({"outage": {"duration": 10, "start_in": 5}}, clock)
    assert engine.decide("ping").immediate_status is None
    clock.now += 6
    decision = engine.decide("ping")
    assert decision.immediate_status == 503 and decision.headers["Retry-After"] == "9"
    clock.now += 10
    assert engine.decide("ping").immediate_status is None


def test_rate_limit_refills() -> None:
    """The token bucket admits its burst, refuses with 429, and admits again after refilling."""
    clock = FakeClock()
    engine = _engine({"rate_limit": {"rps": 2, "burst": 2}}, clock)
    assert [engine.decide("ping").immediate_status for _ in range(3)] == [None, None, 429]
    clock.now += 0.5
    assert engine.decide("ping").immediate_status is None


def test_capacity_reject_counts_and_releases() -> None:
    """Capacity in reject mode refuses beyond max_in_flight until earlier requests are released."""
    engine = _engine({"capacity": {"max_in_flight": 1}})
    first = engine.decide("transactions")
    assert first.immediate_status is None and engine.decide("transactions").immediate_status == 429
    engine.release(first)
    assert engine.decide("transactions").immediate_status is None


def test_invalid_configs_are_refused() -> None:
    """Unknown endpoints, non-error statuses and rates above 1 are configuration errors."""
    for bad in (
        {"endpoint": "nope"},
        {"error_rates": {"200": 0.1}},
        {"error_rates": {"500": 0.7, "503": 0.7}},
        {"x": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            parse_fault_config(bad)


# -- reject_items: attributed (per item) or not (whole request) ---------------------------------------------


def test_reject_items_attribute_option_is_parsed_and_reaches_the_decision() -> None:
    """``attribute`` defaults to True, ``false`` is kept, and the rule's spec travels in the decision."""
    spec = {"prefix": "bad-", "fields": ["id"], "attribute": False}
    decision = _engine({"endpoint": "transactions", "reject_items": spec}).decide("transactions")
    assert [(r.prefix, r.attribute) for r in decision.reject_items] == [("bad-", False)]
    assert decision.labels == ["reject_items"]
    assert parse_fault_config({"reject_items": {"prefix": "x"}}).rules[0].reject_items.attribute is True  # type: ignore[union-attr]
    for bad in (
        {"prefix": "x", "attribute": "maybe"},
        {"prefix": "x", "status": "200"},
        {"prefix": "x", "status": "4x"},
    ):
        with pytest.raises(pydantic.ValidationError):
            parse_fault_config({"reject_items": bad})


_ORG = "org-1"


def _txn(event_id: str) -> dict[str, Any]:
    """A valid APPROVED transaction item."""
    attributes = {
        "userId": "u1",
        "amount": 1000,
        "status": "APPROVED",
        "currency": "USD",
        "description": "COFFEE",
        "cardBIN": "123456",
        "cardLastFour": "4321",
        "direction": "DEBIT",
        "paymentType": "CARD",
        "transactionId": f"txn-{event_id}",
        "authorizationDate": "2025-01-02T03:04:05Z",
        "merchant": {"name": "COFFEE", "addrState": "PA"},
    }
    return {"type": "transaction", "id": event_id, "attributes": attributes}


def _segment(segment_id: str) -> dict[str, Any]:
    """A valid segmentUser item (eligibility has no 207 and its items have no id)."""
    attributes = {
        "userId": "u1",
        "issuerId": _ORG,
        "segmentId": segment_id,
        "status": "ACTIVE",
        "eventTime": "2021-07-02T17:47:06Z",
    }
    return {"type": "segmentUser", "attributes": attributes}


# The sandbox app stores per-request values under string keys (bridge/sandbox/app.py); aiohttp warns.
_QUIET_APP = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


@contextlib.asynccontextmanager
async def _served(faults: object) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], SandboxState]]:
    """The sandbox app in process (aiohttp test server on a loopback port) with ``faults``, and a token."""
    state = SandboxState(SandboxSettings())
    state.faults = FaultEngine(parse_fault_config(faults))
    async with TestClient(TestServer(create_app(state=state))) as client:
        creds = {"client_id": state.settings.client_id, "client_secret": state.settings.client_secret}
        token = (await (await client.post("/v2/auth/token", json=creds)).json())["access_token"]
        client.session.headers["Authorization"] = f"Bearer {token}"
        yield client, state


@_QUIET_APP
async def test_unattributed_rejection_refuses_the_whole_request_without_naming_the_item() -> None:
    """With ``attribute: false`` a batch holding a bad item gets one 400 that names no item, on a 207 endpoint
    and on an all-or-nothing one; nothing of it is recorded; a batch without the bad item passes."""
    rules = {
        "rules": [
            {"endpoint": "transactions", "reject_items": {"prefix": "bad-", "fields": ["id"], "attribute": False}},
            {
                "endpoint": "eligibility",
                "reject_items": {"prefix": "seg-bad", "fields": ["segmentId"], "attribute": False},
            },
        ]
    }
    async with _served(rules) as (client, state):
        batches = [
            (f"/v2/issuers/{_ORG}/transactions", [_txn("ok-1"), _txn("bad-2"), _txn("ok-3")]),
            ("/internal/eligibility-broker/ingest", [_segment("s1"), _segment("s2"), _segment("seg-bad-3")]),
        ]
        for path, items in batches:
            response = await client.post(path, json={"data": items})
            assert response.status == 400
            errors = (await response.json())["errors"]
            assert len(errors) == 1
            (error,) = errors
            assert "id" not in error and "source" not in error, "the error must not point at the bad item"
            assert error == {
                "status": "400",
                "title": "Invalid Request",
                "detail": "rejected by the sandbox (reject_items fault)",
            }
        assert state.store.received_count() == 0
        ok = await client.post(f"/v2/issuers/{_ORG}/transactions", json={"data": [_txn("ok-1"), _txn("ok-3")]})
        assert ok.status == 202
        elig = await client.post("/internal/eligibility-broker/ingest", json={"data": [_segment("s1")]})
        assert elig.status == 202
        assert state.store.received_count() == 3
        requests = [r.as_json() for r in state.store.request_log if r.meta.endpoint != "token"]
        assert [(r["endpoint"], r["status"], r["items"]) for r in requests] == [
            ("transactions", 400, 3),
            ("eligibility", 400, 3),
            ("transactions", 202, 2),
            ("eligibility", 202, 1),
        ]


@_QUIET_APP
async def test_attributed_rejection_still_names_each_item() -> None:
    """The default (``attribute`` true) is unchanged: a 207 naming the bad item by id and pointer."""
    async with _served({"reject_items": {"prefix": "bad-", "fields": ["id"], "status": "422"}}) as (client, state):
        response = await client.post(f"/v2/issuers/{_ORG}/transactions", json={"data": [_txn("ok-1"), _txn("bad-2")]})
        assert response.status == 207
        errors = (await response.json())["errors"]
        assert [(e["status"], e["id"], e["source"]["pointer"]) for e in errors] == [("422", "bad-2", "/data/1/id")]
        assert state.store.received_count() == 1
