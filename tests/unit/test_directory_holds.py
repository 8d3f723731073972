"""The cutover hold in the directory: what the feed says about a hold, and what a gateway's directory makes of it."""

from __future__ import annotations

import msgspec
import pytest

from gateway.directory import Directory
from tenantry_common.directory import DirectoryPage, DirectoryTenant
from tenantry_common.holds import MAX_HOLD_SECONDS, checked_hold_seconds
from tenantry_common.redis_keys import gateways_key, hold_acks_key
from tenantry_common.settings import ConfigError

ACME = "00000000-0000-0000-0000-00000000000a"
OTHER = "00000000-0000-0000-0000-00000000000b"


def tenant(tenant_id: str, revision: int, hold: str | None = None) -> DirectoryTenant:
    return DirectoryTenant(
        id=tenant_id, slug=f"t{tenant_id[-1]}", status="active", plan="free", limits={}, upstream_url=None,
        domains=[], keys=[], revision=revision, hold=hold,
    )  # fmt: skip


def page(*tenants: DirectoryTenant, revision: int, full: bool = False, removed: tuple[str, ...] = ()) -> DirectoryPage:
    return DirectoryPage(revision=revision, tenants=list(tenants), removed=list(removed), full=full)


def test_a_page_from_a_tenant_service_without_holds_means_no_hold() -> None:
    older = {
        "revision": 3, "removed": [], "full": True,
        "tenants": [{"id": ACME, "slug": "acme", "status": "active", "plan": "free", "limits": {},
                     "upstream_url": None, "domains": [], "keys": [], "revision": 3}],
    }  # fmt: skip
    decoded = msgspec.json.decode(msgspec.json.encode(older), type=DirectoryPage)
    assert decoded.installation is None
    assert decoded.tenants[0].hold is None
    directory = Directory()
    directory.apply_page(decoded)
    assert directory.by_id[ACME].hold is None
    assert directory.held == {}
    assert directory.installation is None


def test_a_held_tenant_carries_its_hold_id_on_the_wire() -> None:
    wire = msgspec.json.encode(page(tenant(ACME, 4, hold="h1"), revision=4))
    assert msgspec.json.decode(wire)["tenants"][0]["hold"] == "h1"
    assert msgspec.json.decode(wire, type=DirectoryPage).tenants[0].hold == "h1"


def test_the_directory_shows_a_hold_and_forgets_it_when_it_is_lifted() -> None:
    directory = Directory()
    directory.apply_page(page(tenant(ACME, 1), tenant(OTHER, 1), revision=1, full=True))
    assert directory.held == {}
    directory.apply_page(page(tenant(ACME, 2, hold="h1"), revision=2))
    assert directory.by_id[ACME].hold == "h1"
    assert directory.by_slug["ta"].hold == "h1"
    assert directory.by_id[OTHER].hold is None
    assert directory.held == {ACME: "h1"}
    directory.apply_page(page(tenant(ACME, 3), revision=3))
    assert directory.by_id[ACME].hold is None
    assert directory.held == {}


def test_a_new_hold_replaces_the_old_one() -> None:
    directory = Directory()
    directory.apply_page(page(tenant(ACME, 1, hold="h1"), revision=1, full=True))
    directory.apply_page(page(tenant(ACME, 2, hold="h2"), revision=2))
    assert directory.held == {ACME: "h2"}


def test_an_overlapping_poll_of_an_older_revision_does_not_bring_a_lifted_hold_back() -> None:
    directory = Directory()
    directory.apply_page(page(tenant(ACME, 5), revision=5, full=True))
    directory.apply_page(page(tenant(ACME, 4, hold="h1"), revision=5))
    assert directory.held == {}


def test_a_full_resync_and_a_removal_keep_only_the_holds_the_registry_shows() -> None:
    directory = Directory()
    directory.apply_page(page(tenant(ACME, 1, hold="h1"), tenant(OTHER, 1, hold="h2"), revision=1, full=True))
    assert directory.held == {ACME: "h1", OTHER: "h2"}
    directory.apply_page(page(tenant(ACME, 2), tenant(OTHER, 1, hold="h2"), revision=2, full=True))
    assert directory.held == {OTHER: "h2"}
    directory.apply_page(page(revision=3, removed=(OTHER,)))
    assert directory.held == {}


def test_the_directory_learns_the_installation_it_follows() -> None:
    directory = Directory()
    directory.apply_page(DirectoryPage(revision=1, tenants=[], removed=[], full=True, installation="inst-1"))
    directory.apply_page(page(revision=2))  # a page without it (an older replica of the tenant-service)
    assert directory.installation == "inst-1"


def test_the_hold_keys_are_platform_keys() -> None:
    assert gateways_key("inst-1") == "tenantry:gateways:inst-1"
    assert hold_acks_key("h1") == "tenantry:hold:h1"


def test_a_hold_longer_than_a_minute_is_refused_at_start() -> None:
    assert checked_hold_seconds(5.0) == 5.0
    with pytest.raises(ConfigError, match="CUTOVER_HOLD_SECONDS"):
        checked_hold_seconds(MAX_HOLD_SECONDS + 1)
