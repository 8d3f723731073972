"""Black-box tests of a tenant's external JWT issuers in the admin API, and of their place in the directory feed.

An (issuer, audience) pair is trusted by one tenant at most: that is what keeps a token minted for tenant A's users
from being accepted as tenant B's.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import redis.asyncio as redis

from support.assertions import assert_problem, create_tenant, uniq
from support.platform import Installation, directory_page, registry
from tenantry_common.jwt_keys import EXTERNAL_ALGORITHMS
from tenantry_common.redis_keys import EVENTS_CHANNEL

ACTOR = "admin:admin"


def idp() -> str:
    """An issuer nobody else in the session uses."""
    return f"https://idp-{secrets.token_hex(4)}.example.com/"


def body(**fields: object) -> dict:
    """A valid body with a fresh issuer; ``fields`` replace or add to it."""
    issuer = idp()
    return {"issuer": issuer, "audience": "acme-api", "jwks_url": issuer + ".well-known/jwks.json", **fields}


async def create(api, stem: str) -> dict:
    return await create_tenant(api, uniq(stem))


async def add(api, ref: str, payload: dict) -> dict:
    response = await api.post(f"/admin/tenants/{ref}/jwt-issuers", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


async def issuers(api, ref: str) -> list[dict]:
    response = await api.get(f"/admin/tenants/{ref}/jwt-issuers")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    return page["items"]


async def rows_of(installation: Installation, tenant_id: str) -> list[dict]:
    rows = await registry(
        installation,
        "SELECT id, issuer, audience, jwks_url, algorithms FROM tenant_jwt_issuers WHERE tenant_id = $1 ORDER BY id",
        uuid.UUID(tenant_id),
    )
    return [dict(r) for r in rows]


def entry_of(page: dict, tenant_id: str) -> dict:
    return next(t for t in page["tenants"] if t["id"] == tenant_id)


# --- create, list, delete --------------------------------------------------------------------------------------


async def test_create_returns_201_with_the_issuer_and_lists_it(api) -> None:
    tenant = await create(api, "create")
    payload = {
        "issuer": "https://idp.acme-" + secrets.token_hex(3) + ".com/",
        "audience": "acme-api",
        "jwks_url": "https://idp.acme.com/.well-known/jwks.json",
        "algorithms": ["RS256", "ES256"],
    }
    before = datetime.now(UTC)
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=payload)
    assert response.status_code == 201, response.text
    made = response.json()
    assert set(made) == {"id", "issuer", "audience", "jwks_url", "algorithms", "created_at", "role_claim", "role_map"}
    assert uuid.UUID(made["id"])
    assert {k: made[k] for k in payload} == payload
    created = datetime.fromisoformat(made["created_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert await issuers(api, tenant["id"]) == [made]
    assert await issuers(api, tenant["slug"]) == [made]


async def test_algorithms_default_to_rs256(api) -> None:
    tenant = await create(api, "default")
    made = await add(api, tenant["id"], body())
    assert made["algorithms"] == ["RS256"]


async def test_every_external_algorithm_is_accepted_and_the_document_lists_exactly_them(api) -> None:
    tenant = await create(api, "allalgs")
    made = await add(api, tenant["id"], body(algorithms=list(EXTERNAL_ALGORITHMS)))
    assert made["algorithms"] == list(EXTERNAL_ALGORITHMS)
    document = (await api.get("/schema/openapi.json")).json()
    algorithms = document["components"]["schemas"]["JwtIssuerCreate"]["properties"]["algorithms"]
    assert sorted(algorithms["items"]["enum"]) == sorted(EXTERNAL_ALGORITHMS)


async def test_a_new_tenant_trusts_no_issuer_and_the_list_is_oldest_first(api) -> None:
    tenant = await create(api, "list")
    assert await issuers(api, tenant["id"]) == []
    made = [await add(api, tenant["id"], body()) for _ in range(3)]
    assert [i["id"] for i in await issuers(api, tenant["id"])] == [m["id"] for m in made]


async def test_delete_returns_204_then_404(api, installation: Installation) -> None:
    tenant = await create(api, "delete")
    keep = await add(api, tenant["id"], body())
    gone = await add(api, tenant["id"], body())
    response = await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{gone['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert await issuers(api, tenant["id"]) == [keep]
    assert [str(r["id"]) for r in await rows_of(installation, tenant["id"])] == [keep["id"]]
    again = await api.delete(f"/admin/tenants/{tenant['slug']}/jwt-issuers/{gone['id']}")
    assert_problem(again, 404, "issuer_not_found")


@pytest.mark.parametrize(
    "issuer_id",
    ["6f1c2a8e-3b7d-4c1e-9a5f-2d8b7e4c1a90", "not-a-uuid", "00000000-0000-0000-0000-000000000000", "1", "a%00b"],
)
async def test_unknown_or_malformed_issuer_id_gets_404(api, issuer_id: str) -> None:
    tenant = await create(api, "noiss")
    response = await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{issuer_id}")
    assert_problem(response, 404, "issuer_not_found")


async def test_another_tenants_issuer_is_unknown_here(api) -> None:
    a = await create(api, "owner")
    b = await create(api, "other")
    made = await add(api, a["id"], body())
    assert_problem(await api.delete(f"/admin/tenants/{b['id']}/jwt-issuers/{made['id']}"), 404, "issuer_not_found")
    assert await issuers(api, a["id"]) == [made]
    assert await issuers(api, b["id"]) == []


async def test_unknown_tenant_gets_404(api) -> None:
    for ref in ("iss-never-" + secrets.token_hex(3), str(uuid.uuid4())):
        assert_problem(await api.post(f"/admin/tenants/{ref}/jwt-issuers", json=body()), 404, "tenant_not_found")
        assert_problem(await api.get(f"/admin/tenants/{ref}/jwt-issuers"), 404, "tenant_not_found")
        response = await api.delete(f"/admin/tenants/{ref}/jwt-issuers/{uuid.uuid4()}")
        assert_problem(response, 404, "tenant_not_found")


async def test_a_deleted_tenant_gains_no_issuer_but_can_lose_one(api) -> None:
    tenant = await create(api, "deleted")
    made = await add(api, tenant["id"], body())
    assert (await api.delete(f"/admin/tenants/{tenant['id']}")).status_code == 200
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body())
    assert_problem(response, 409, "invalid_state")
    assert await issuers(api, tenant["id"]) == [made]
    # Withdrawing trust is always allowed.
    assert (await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{made['id']}")).status_code == 204
    assert await issuers(api, tenant["id"]) == []


# --- the (issuer, audience) pair belongs to one tenant ---------------------------------------------------------


async def test_the_same_pair_on_another_tenant_gets_409_without_naming_the_owner(api, installation) -> None:
    a = await create(api, "pair-a")
    b = await create(api, "pair-b")
    payload = body()
    made = await add(api, a["id"], payload)
    response = await api.post(f"/admin/tenants/{b['id']}/jwt-issuers", json=payload)
    problem = assert_problem(response, 409, "issuer_taken")
    for secret in (a["id"], a["slug"], made["id"]):
        assert secret not in response.text, problem
    # The same pair with another JWKS URL or other algorithms is still the same pair.
    other = {**payload, "jwks_url": "https://elsewhere.example.net/jwks", "algorithms": ["ES256"]}
    assert_problem(await api.post(f"/admin/tenants/{b['id']}/jwt-issuers", json=other), 409, "issuer_taken")
    # And on its own tenant too.
    assert_problem(await api.post(f"/admin/tenants/{a['id']}/jwt-issuers", json=payload), 409, "issuer_taken")
    assert await issuers(api, a["id"]) == [made]
    assert await rows_of(installation, b["id"]) == []


async def test_the_same_issuer_with_another_audience_or_the_reverse_is_another_pair(api) -> None:
    a = await create(api, "aud-a")
    b = await create(api, "aud-b")
    payload = body()
    await add(api, a["id"], payload)
    other_audience = await add(api, b["id"], {**payload, "audience": "acme-admin"})
    assert other_audience["issuer"] == payload["issuer"]
    other_issuer = await add(api, b["id"], {**payload, "issuer": idp()})
    assert other_issuer["audience"] == payload["audience"]
    # Exact strings: without its trailing slash it is another issuer (iss is compared as a string).
    await add(api, b["id"], {**payload, "issuer": payload["issuer"].rstrip("/")})
    assert len(await issuers(api, b["id"])) == 3


async def test_a_removed_pair_can_be_trusted_by_another_tenant(api) -> None:
    a = await create(api, "free-a")
    b = await create(api, "free-b")
    payload = body()
    made = await add(api, a["id"], payload)
    assert (await api.delete(f"/admin/tenants/{a['id']}/jwt-issuers/{made['id']}")).status_code == 204
    moved = await add(api, b["id"], payload)
    assert moved["id"] != made["id"]


async def test_concurrent_claims_of_one_pair_by_two_tenants_let_exactly_one_win(api, installation) -> None:
    tenants = [await create(api, f"race-{i}") for i in range(4)]
    payload = body()
    responses = await asyncio.gather(
        *(api.post(f"/admin/tenants/{t['id']}/jwt-issuers", json=payload) for t in tenants)
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409], [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "issuer_taken")
    rows = await registry(
        installation,
        "SELECT tenant_id FROM tenant_jwt_issuers WHERE issuer = $1 AND audience = $2",
        payload["issuer"],
        payload["audience"],
    )
    assert len(rows) == 1


async def test_an_eleventh_issuer_gets_409_too_many_issuers(api) -> None:
    tenant = await create(api, "many")
    made = [await add(api, tenant["id"], body()) for _ in range(10)]
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body())
    assert_problem(response, 409, "too_many_issuers")
    assert len(await issuers(api, tenant["id"])) == 10
    assert (await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{made[0]['id']}")).status_code == 204
    await add(api, tenant["id"], body())


# --- validation ------------------------------------------------------------------------------------------------


#: Plain http:// or a private address outside UPSTREAM_ALLOWLIST (the test installation allows loopback names and
#: 127.0.0.1 / ::1), and hosts never allowed: link-local, metadata, reserved, multicast, unspecified.
REFUSED_JWKS_URLS = [
    "http://idp.example.com/jwks",
    "http://10.0.0.1/jwks",
    "http://localhost.evil.example/jwks",
    "https://10.0.0.1/jwks",
    "https://192.168.1.5/jwks",
    "https://[fd12::1]/jwks",
    "https://127.0.0.2/j",
    "https://169.254.169.254/latest/meta-data",
    "https://169.254.169.254./jwks",
    "https://[fe80::1]/jwks",
    "https://[::ffff:169.254.169.254]/jwks",
    "https://100.100.100.200/jwks",
    "https://metadata.google.internal/computeMetadata/v1",
    "https://METADATA.GOOGLE.INTERNAL./jwks",
    "https://instance-data/jwks",
    "https://0.0.0.0/jwks",
    "https://224.0.0.1/jwks",
    "http://169.254.169.254/jwks",
]
ACCEPTED_JWKS_URLS = [
    "http://localhost:8080/jwks",
    "http://127.0.0.1:9/.well-known/jwks.json",
    "http://[::1]:8443/jwks",
    "https://127.0.0.1:8443/jwks",
    "https://[::1]/jwks",
    "https://8.8.8.8/jwks",
]


@pytest.mark.parametrize("jwks_url", REFUSED_JWKS_URLS)
async def test_a_host_outside_the_allowlist_or_never_allowed_gets_422_jwks_url_not_allowed(api, jwks_url: str) -> None:
    tenant = await create(api, "refused")
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body(jwks_url=jwks_url))
    assert_problem(response, 422, "jwks_url_not_allowed", field="jwks_url")
    assert await issuers(api, tenant["id"]) == []


@pytest.mark.parametrize("jwks_url", ACCEPTED_JWKS_URLS)
async def test_an_allowlisted_or_public_host_is_accepted(api, jwks_url: str) -> None:
    tenant = await create(api, "accepted")
    made = await add(api, tenant["id"], body(jwks_url=jwks_url))
    assert made["jwks_url"] == jwks_url


@pytest.mark.parametrize(
    "jwks_url",
    [
        "https://2852039166/jwks",
        "https://0xa9fea9fe/jwks",
        "https://169.254.43518/jwks",
        "idp.example.com/jwks",
        "//idp.example.com/jwks",
        "ftp://idp.example.com/jwks",
        "file:///etc/passwd",
        "https:///jwks",
        "https://user:pw@idp.example.com/jwks",
        "https://@idp.example.com/jwks",
        "https://idp.example.com/jwks#frag",
        "https://idp.example.com:99999/jwks",
        "https://idp.example.com/jw ks",
        "https://idp.example.com/jwks\n",
        "https://bücher.example.com/jwks",
        "https://[v1.x]/jwks",
        "https://a..b/jwks",
        "https://%31%36%39.254.169.254/jwks",
        # The rules shared with upstream_url: raw or percent-encoded controls, port 0, IPv4 hosts in other spellings.
        "https://idp.example.com/jwks\t",
        "https://idp.example.com/j\x7fwks",
        "https://idp.example.com/jwks%0d%0aX-Evil:%201",
        "https://idp.example.com/jwks%00",
        "https://idp.example.com/%7F",
        "https://idp.example.com/jwks?x=%1b",
        "https://idp.example.com:0/jwks",
        "https://0x7f.0x1/jwks",
        "https://127.1/jwks",
        "https://0177.0.0.1/jwks",
        "https://2130706433/jwks",
        "https://0x7f000001/jwks",
        "https://1.2.3.04/jwks",
        "a\u0000b",
        "",
        "https://idp.example.com/" + "x" * 2048,
    ],
)
async def test_a_malformed_jwks_url_gets_422_naming_it(api, jwks_url: str) -> None:
    tenant = await create(api, "badurl")
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body(jwks_url=jwks_url))
    assert_problem(response, 422, "validation_error", field="jwks_url")
    assert await issuers(api, tenant["id"]) == []


@pytest.mark.parametrize(
    ("algorithms", "field"),
    [
        (["HS256"], "algorithms[0]"),
        (["none"], "algorithms[0]"),
        (["RS256", "HS512"], "algorithms[1]"),
        (["rs256"], "algorithms[0]"),
        ([], "algorithms"),
        (["RS256", "RS256"], "algorithms"),
        ("RS256", "algorithms"),
        (None, "algorithms"),
        ([list(EXTERNAL_ALGORITHMS)], "algorithms[0]"),
        ([*EXTERNAL_ALGORITHMS, "RS256"], "algorithms"),
    ],
)
async def test_a_symmetric_unknown_or_repeated_algorithm_gets_422(api, algorithms: object, field: str) -> None:
    tenant = await create(api, "badalg")
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=body(algorithms=algorithms))
    assert_problem(response, 422, "validation_error", field=field)
    assert await issuers(api, tenant["id"]) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"audience": "a", "jwks_url": "https://idp.example.com/jwks"}, "issuer"),
        ({"issuer": "https://i.example.com/", "jwks_url": "https://idp.example.com/jwks"}, "audience"),
        ({"issuer": "https://i.example.com/", "audience": "a"}, "jwks_url"),
        (body(issuer=""), "issuer"),
        (body(audience=""), "audience"),
        (body(issuer="x" * 513), "issuer"),
        (body(audience="x" * 513), "audience"),
        (body(issuer="a\u0000b"), "issuer"),
        (body(audience="a\u0000b"), "audience"),
        (body(issuer=5), "issuer"),
        (body(audience=["a"]), "audience"),
        (body(tenant_id=str(uuid.uuid4())), "tenant_id"),
        (body(id=str(uuid.uuid4())), "id"),
        (body(created_at="2020-01-01T00:00:00Z"), "created_at"),
        (body(secret="hs256-shared-secret"), "secret"),
    ],
)
async def test_a_body_with_a_wrong_shape_or_unknown_field_gets_422_naming_the_field(
    api, payload: dict, field: str
) -> None:
    tenant = await create(api, "shape")
    response = await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=payload)
    assert_problem(response, 422, "validation_error", field=field)
    assert await issuers(api, tenant["id"]) == []


async def test_issuer_and_audience_of_512_characters_are_accepted(api) -> None:
    tenant = await create(api, "long")
    payload = body(issuer="https://" + secrets.token_hex(4) + "x" * 496, audience="a" * 512)
    assert len(payload["issuer"]) == 512
    made = await add(api, tenant["id"], payload)
    assert (made["issuer"], made["audience"]) == (payload["issuer"], payload["audience"])


# --- audit, events, directory, purge ---------------------------------------------------------------------------


async def test_add_and_remove_are_audited_and_failures_are_not(api) -> None:
    tenant = await create(api, "audit")
    payload = body(algorithms=["ES256", "RS256"])
    made = await add(api, tenant["id"], payload)
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=payload), 409, "issuer_taken")
    bad = body(jwks_url="https://169.254.169.254/")
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=bad), 422)
    assert (await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{made['id']}")).status_code == 204
    response = await api.get("/admin/audit", params={"tenant": tenant["id"], "limit": 200})
    assert response.status_code == 200, response.text
    entries = [e for e in response.json()["items"] if e["action"].startswith("jwt_issuer.")]
    assert [e["action"] for e in entries] == ["jwt_issuer.remove", "jwt_issuer.add"]  # newest first
    fields = {k: made[k] for k in ("id", "issuer", "audience", "jwks_url", "algorithms", "role_claim", "role_map")}
    removed, added = entries
    assert (added["actor"], added["target"], added["tenant_id"]) == (ACTOR, made["id"], tenant["id"])
    assert (added["before"], added["after"]) == (None, fields)
    assert (removed["actor"], removed["target"], removed["tenant_id"]) == (ACTOR, made["id"], tenant["id"])
    assert (removed["before"], removed["after"]) == (fields, None)


async def test_add_and_remove_publish_a_change_event(api, redis_url: str) -> None:
    tenant = await create(api, "events")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(EVENTS_CHANNEL)
        subscribed = await pubsub.get_message(timeout=5)
        assert subscribed is not None
        assert subscribed["type"] == "subscribe"

        async def next_event_of_the_tenant() -> dict:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                assert message is not None, "no event published"
                event = msgspec.json.decode(message["data"])
                if event.get("tenant_id") == tenant["id"]:
                    return event

        made = await add(api, tenant["id"], body())
        assert (await next_event_of_the_tenant())["kind"] == "tenant.changed"
        assert (await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{made['id']}")).status_code == 204
        assert (await next_event_of_the_tenant())["kind"] == "tenant.changed"
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_the_directory_carries_the_issuers_and_every_change_raises_the_revision(api, installation) -> None:
    tenant = await create(api, "dir")
    full = await directory_page(api, installation)
    entry = entry_of(full, tenant["id"])
    assert entry["jwt_issuers"] == []
    revision, since = entry["revision"], full["revision"]

    made = await add(api, tenant["id"], body(algorithms=["EdDSA", "PS256"]))
    changed = await directory_page(api, installation, since)
    assert changed["revision"] > since
    entry = entry_of(changed, tenant["id"])
    assert entry["revision"] > revision
    assert entry["jwt_issuers"] == [
        {k: made[k] for k in ("id", "issuer", "audience", "jwks_url", "algorithms", "role_claim", "role_map")}
    ]
    one = await api.get(
        f"/internal/v1/directory/tenants/{tenant['id']}",
        headers={"Authorization": f"Bearer {installation.gateway_token}"},
    )
    assert one.status_code == 200, one.text
    assert [t["jwt_issuers"] for t in one.json()["tenants"]] == [entry["jwt_issuers"]]
    assert entry_of(await directory_page(api, installation), tenant["id"])["jwt_issuers"] == entry["jwt_issuers"]

    revision, since = entry["revision"], changed["revision"]
    assert (await api.delete(f"/admin/tenants/{tenant['id']}/jwt-issuers/{made['id']}")).status_code == 204
    changed = await directory_page(api, installation, since)
    entry = entry_of(changed, tenant["id"])
    assert entry["revision"] > revision
    assert entry["jwt_issuers"] == []

    # A refused change changes nothing, so a gateway has nothing to resync.
    since = changed["revision"]
    bad = body(algorithms=["HS256"])
    assert_problem(await api.post(f"/admin/tenants/{tenant['id']}/jwt-issuers", json=bad), 422)
    assert all(t["id"] != tenant["id"] for t in (await directory_page(api, installation, since))["tenants"])


async def test_the_directory_keeps_each_tenants_issuers_apart(api, installation) -> None:
    a = await create(api, "dir-a")
    b = await create(api, "dir-b")
    issuer = idp()
    mine = await add(api, a["id"], body(issuer=issuer, audience="a-api"))
    theirs = await add(api, b["id"], body(issuer=issuer, audience="b-api"))
    full = await directory_page(api, installation)
    assert [i["id"] for i in entry_of(full, a["id"])["jwt_issuers"]] == [mine["id"]]
    assert [i["id"] for i in entry_of(full, b["id"])["jwt_issuers"]] == [theirs["id"]]


async def test_purging_a_tenant_removes_its_issuers_and_frees_the_pair(api, installation) -> None:
    tenant = await create(api, "purge")
    payload = body()
    await add(api, tenant["id"], payload)
    await add(api, tenant["id"], body())
    assert len(await rows_of(installation, tenant["id"])) == 2
    purged = await api.delete(f"/admin/tenants/{tenant['id']}", params={"purge": "true"})
    assert purged.status_code == 200, purged.text
    assert await rows_of(installation, tenant["id"]) == []
    other = await create(api, "purge-next")
    await add(api, other["id"], payload)
