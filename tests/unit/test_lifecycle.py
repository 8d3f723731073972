"""The tenant lifecycle's one home (``tenantry_common.lifecycle``): its tables agree with each other."""

from __future__ import annotations

from tenantry_common.lifecycle import (
    CHANGEABLE,
    HAS_DATABASE,
    LOGIN_ALLOWED,
    REFUSALS,
    RESTORABLE_TO,
    TRANSITIONS,
    TenantAction,
    TenantStatus,
    check_constraint,
    refusal,
)


def test_every_status_but_active_has_a_refusal_and_active_is_served() -> None:
    assert refusal("active") is None
    assert set(REFUSALS) == set(TenantStatus) - {TenantStatus.ACTIVE}
    assert refusal("suspended") == REFUSALS[TenantStatus.SUSPENDED]
    assert (refusal("deleted").status, refusal("deleted").code) == (404, "tenant_not_found")  # type: ignore[union-attr]
    for status in (TenantStatus.PROVISIONING, TenantStatus.FAILED):
        refused = refusal(status)
        assert refused is not None
        assert (refused.status, refused.code, refused.retry_after) == (503, "tenant_unavailable", 5)


def test_a_status_from_a_newer_release_is_refused_as_unavailable() -> None:
    refused = refusal("moving")
    assert refused is not None
    assert refused.status == 503
    assert refused.retry_after


def test_transitions_name_only_known_statuses_and_every_action() -> None:
    assert set(TRANSITIONS) == set(TenantAction)
    for rule in TRANSITIONS.values():
        assert rule.sources <= set(TenantStatus)
        assert rule.target in set(TenantStatus)
    assert RESTORABLE_TO <= LOGIN_ALLOWED <= HAS_DATABASE
    assert TenantStatus.DELETING not in CHANGEABLE


def test_the_check_constraint_lists_every_status() -> None:
    assert check_constraint() == ("status in ('provisioning','active','suspended','failed','deleting','deleted')")
