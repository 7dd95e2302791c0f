"""Attribution events become offer/notification attribution items, per user or in bulk."""

from __future__ import annotations

import pytest

from bridge.routes import Endpoint
from tests.unit.mapping_helpers import context, failure, map_event, minimal

BULK = context(attribution_mode="bulk")


def test_offer_attribution_per_user() -> None:
    """Per-user mode: the user is in the path and the item carries only entity, code, medium and date."""
    item = map_event(minimal("offer_attribution", event_date="2025-01-01T01:00:00+01:00"))
    assert item.item == {
        "type": "offerAttribution",
        "attributes": {
            "entityId": "offer-1",
            "eventCode": "VIEW",
            "medium": "EMAIL",
            "eventDate": "2025-01-01T00:00:00Z",
        },
    }
    assert item.route.endpoint is Endpoint.USER_ATTRIBUTIONS
    assert item.route.path == "v2/issuers/org-demo/users/user-1/attributions"
    assert item.ordering_key == "user-1"


def test_notification_attribution_defaults_to_push() -> None:
    """A notification attribution without medium is sent with medium PUSH."""
    item = map_event(minimal("notification_attribution"))
    assert item.item["type"] == "notificationAttribution"
    assert item.item["attributes"]["medium"] == "PUSH"


def test_bulk_mode_puts_issuer_and_user_in_the_item() -> None:
    """Bulk mode posts to v2/internal/attributions with issuerId and userId inside each item."""
    item = map_event(minimal("offer_attribution", organization_id="org-acme"), BULK)
    assert item.item == {
        "type": "offerAttribution",
        "attributes": {
            "issuerId": "org-acme",
            "userId": "user-1",
            "entityId": "offer-1",
            "eventCode": "VIEW",
            "medium": "EMAIL",
            "eventDate": "2025-01-02T03:04:05Z",
        },
    }
    assert item.route.endpoint is Endpoint.BULK_ATTRIBUTIONS
    assert item.route.path == "v2/internal/attributions"
    assert item.route.organization_id == "org-acme"
    assert item.route.user_id is None


def test_unsafe_user_id_fails_only_where_it_is_a_path_segment() -> None:
    """A user id with '/' cannot go into the per-user path, but is fine in a bulk item's body."""
    event = minimal("offer_attribution", user_id="user/1")
    assert failure(event) == ("mapping", "unsafe_path_id", "/user_id")
    assert map_event(event, BULK).item["attributes"]["userId"] == "user/1"


def test_item_ids_differ_between_users_with_identical_items() -> None:
    """Per-user items carry no user id, yet two users' identical attributions get different item ids."""
    first = map_event(minimal("offer_attribution", user_id="user-1"))
    second = map_event(minimal("offer_attribution", user_id="user-2"))
    assert first.item == second.item
    assert first.item_id != second.item_id


@pytest.mark.parametrize(
    ("event_type", "fields", "expected"),
    [
        ("offer_attribution", {"medium": "PUSH"}, ("schema", "invalid_enum", "/medium")),
        ("offer_attribution", {"medium": None}, ("schema", "missing_field", "/medium")),
        ("notification_attribution", {"medium": "EMAIL"}, ("schema", "invalid_enum", "/medium")),
        ("offer_attribution", {"event_code": "CLICK"}, ("schema", "invalid_enum", "/event_code")),
        ("offer_attribution", {"event_date": "2025-01-01"}, ("schema", "invalid_datetime", "/event_date")),
        ("notification_attribution", {"entity_id": ""}, ("schema", "invalid_field", "/entity_id")),
        ("offer_attribution", {"user_id": "a b"}, ("mapping", "unsafe_path_id", "/user_id")),
        ("offer_attribution", {"user_id": "%2e"}, ("mapping", "unsafe_path_id", "/user_id")),
    ],
)
def test_attribution_errors(event_type: str, fields: dict[str, object], expected: tuple[str, str, str]) -> None:
    """Each way an attribution event can be wrong gives its reason and pointer."""
    assert failure(minimal(event_type, **fields), topic="kard.attributions") == expected
