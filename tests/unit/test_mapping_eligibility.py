"""Eligibility events become ``segmentUser`` items for the eligibility broker."""

from __future__ import annotations

import pytest

from bridge.routes import Endpoint
from tests.unit.mapping_helpers import context, failure, map_event, minimal


def test_segment_user_maps_to_the_contract_item() -> None:
    """A segment_user event becomes the CONTRACT.md §6.6 item, issuerId being the organization."""
    item = map_event(minimal("segment_user", organization_id="00073100", event_time="2021-07-02T19:47:06+02:00"))
    assert item.item == {
        "type": "segmentUser",
        "attributes": {
            "userId": "user-1",
            "issuerId": "00073100",
            "segmentId": "seg-1",
            "status": "ACTIVE",
            "eventTime": "2021-07-02T17:47:06Z",
        },
    }
    assert item.route.endpoint is Endpoint.ELIGIBILITY
    assert item.route.path == "internal/eligibility-broker/ingest"
    assert item.route.organization_id == "00073100"
    assert item.event_id == "evt-1"


def test_default_organization_is_the_issuer() -> None:
    """Without an organization_id in the event, the configured default becomes issuerId."""
    assert map_event(minimal("segment_user", status="INACTIVE")).item["attributes"]["issuerId"] == "org-demo"


def test_item_id_is_a_stable_digest_of_the_content() -> None:
    """The item has no API id: item_id is a short digest, equal for equal content, different otherwise."""
    first = map_event(minimal("segment_user"))
    assert len(first.item_id) == 24
    assert map_event(minimal("segment_user", event_id="evt-other")).item_id == first.item_id
    assert map_event(minimal("segment_user", status="INACTIVE")).item_id != first.item_id
    assert map_event(minimal("segment_user", user_id="user-2")).item_id != first.item_id


def test_user_ids_with_path_characters_are_fine_in_the_body() -> None:
    """The user id travels in the body here, so characters unsafe in a path are accepted."""
    assert map_event(minimal("segment_user", user_id="a/b?c")).item["attributes"]["userId"] == "a/b?c"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "REMOVED"}, ("schema", "invalid_enum", "/status")),
        ({"segment_id": None}, ("schema", "missing_field", "/segment_id")),
        ({"event_time": "2021-07-02T17:47:06"}, ("schema", "naive_datetime", "/event_time")),
        ({"event_time": 1625248026}, ("schema", "wrong_type", "/event_time")),
        ({"segment_id": ["s"]}, ("schema", "wrong_type", "/segment_id")),
        ({"transaction_id": "t"}, ("schema", "unknown_field", "/transaction_id")),
        ({"event_type": "transaction"}, ("schema", "unknown_event_type", "/event_type")),
        ({"organization_id": "org 1"}, ("mapping", "unsafe_path_id", "/organization_id")),
    ],
)
def test_eligibility_errors(fields: dict[str, object], expected: tuple[str, str, str]) -> None:
    """Each way an eligibility event can be wrong gives its reason and pointer."""
    assert failure(minimal("segment_user", **fields), topic="kard.eligibility") == expected


def test_missing_organization_everywhere_fails() -> None:
    """An eligibility event without an organization and without a default cannot be mapped."""
    assert failure(minimal("segment_user"), context(organization_id=None)) == (
        "mapping",
        "missing_organization_id",
        "/organization_id",
    )
