"""Gateway building blocks that need no network: host normalisation, resolution, key ring."""

from __future__ import annotations

import pytest

from gateway.config import GatewaySettings
from gateway.directory import Directory
from gateway.errors import GatewayError
from gateway.forward import escapes_upstream_path
from gateway.resolve import Resolver, normalize_host
from tenantry_common.directory import DirectoryKey, DirectoryPage, DirectoryTenant
from tenantry_common.jwt_keys import InvalidTokenError, KeyRing, generate_signing_key
from tenantry_common.settings import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Acme.Localhost", "acme.localhost"),
        ("acme.localhost:8080", "acme.localhost"),
        ("acme.localhost.", "acme.localhost"),
        ("ACME.LOCALHOST.:80", "acme.localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("127.0.0.1:8080", ""),
        ("[::1]:8080", ""),
        ("", ""),
    ],
)
def test_hosts_normalise(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw", ["user@acme.localhost", "bücher.example", "a..b", "-x.example", "acme.localhost:port", "x" * 254, "a b"]
)
def test_malformed_hosts_get_400(raw: str) -> None:
    with pytest.raises(GatewayError) as excinfo:
        normalize_host(raw)
    assert excinfo.value.status == 400
    assert excinfo.value.code == "invalid_host"


def _directory() -> Directory:
    directory = Directory()
    tenants = [
        DirectoryTenant(
            id=f"00000000-0000-0000-0000-00000000000{i}",
            slug=slug,
            status="active",
            plan="free",
            limits={"requests_per_minute": 10},
            upstream_url=None,
            domains=domains,
            keys=[DirectoryKey(id=f"k{i}", hash=f"{i:02x}" * 32, scopes=[], expires_at=None, revoked=False)],
            revision=i,
        )
        for i, (slug, domains) in enumerate([("acme", ["shop.acme.com"]), ("globex", [])], start=1)
    ]
    directory.apply_page(DirectoryPage(revision=2, tenants=tenants, removed=[], full=True))
    return directory


def test_resolution_by_subdomain_domain_path_and_header() -> None:
    resolver = Resolver(_directory(), "localhost")
    acme = "00000000-0000-0000-0000-000000000001"
    assert resolver.resolve("acme.localhost", "/x", b"/x", None).named == acme
    assert resolver.resolve("shop.acme.com", "/x", b"/x", None).named == acme
    located = resolver.resolve("", "/t/acme/a/b", b"/t/acme/a/b", None)
    assert located.named == acme
    assert located.upstream_path == b"/a/b"
    assert resolver.resolve("", "/t/acme", b"/t/acme", None).upstream_path == b"/"
    assert resolver.resolve("", "/x", b"/x", "ACME").named == acme
    assert resolver.resolve("", "/x", b"/x", acme).named == acme
    assert resolver.resolve("localhost", "/x", b"/x", None).named is None
    assert resolver.resolve("www.localhost", "/x", b"/x", None).named is None
    unknown = resolver.resolve("nobody.localhost", "/x", b"/x", None)
    assert unknown.tenant is None
    assert unknown.named == "slug:nobody"


def test_conflicting_sources_get_400() -> None:
    resolver = Resolver(_directory(), "localhost")
    with pytest.raises(GatewayError) as excinfo:
        resolver.resolve("acme.localhost", "/t/globex/x", b"/t/globex/x", None)
    assert excinfo.value.code == "tenant_conflict"
    with pytest.raises(GatewayError):
        resolver.resolve("", "/t/acme/x", b"/t/acme/x", "globex")
    with pytest.raises(GatewayError):
        resolver.resolve("", "/t/%2e%2e/x", b"/t/%2e%2e/x", "acme")


def test_directory_removal_drops_routes_and_keys() -> None:
    directory = _directory()
    directory.apply_page(
        DirectoryPage(revision=3, tenants=[], removed=["00000000-0000-0000-0000-000000000001"], full=False)
    )
    assert directory.by_slug.keys() == {"globex"}
    assert "shop.acme.com" not in directory.by_domain
    assert "k1" not in directory.keys_by_id
    assert directory.revision == 3


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_key_ring_signs_verifies_and_publishes(algorithm: str) -> None:
    old, new = generate_signing_key(algorithm), generate_signing_key(algorithm)
    before = KeyRing.from_config(f"k1:{old}", algorithm)
    after = KeyRing.from_config(f"k2:{new},k1:{old}", algorithm)
    claims = {"iss": "i", "aud": "a", "sub": "s", "tid": "t", "iat": 1, "exp": 4_000_000_000}
    token = before.sign(claims)
    assert after.verify(token, audience="a", issuer="i")["tid"] == "t"
    assert [k["kid"] for k in after.jwks()["keys"]] == ["k2", "k1"]
    assert all("d" not in k for k in after.jwks()["keys"])
    with pytest.raises(InvalidTokenError):
        KeyRing.from_config(f"k2:{new}", algorithm).verify(token, audience="a", issuer="i")
    with pytest.raises(InvalidTokenError):
        after.verify(token, audience="other", issuer="i")


def test_key_ring_refuses_bad_configuration() -> None:
    with pytest.raises(ConfigError):
        KeyRing.from_config("", "EdDSA")
    with pytest.raises(ConfigError):
        KeyRing.from_config("k1:" + generate_signing_key("EdDSA"), "HS256")
    with pytest.raises(ConfigError):
        KeyRing.from_config("k1:" + generate_signing_key("RS256"), "EdDSA")
    with pytest.raises(ConfigError):
        KeyRing.from_config("k1:bm90IGEga2V5", "EdDSA")


def test_overlapping_polls_skip_entries_the_directory_already_has() -> None:
    directory = _directory()
    acme_id = "00000000-0000-0000-0000-000000000001"
    acme = directory.by_id[acme_id]

    def page(status: str, revision: int) -> DirectoryPage:
        changed = DirectoryTenant(
            id=acme_id, slug="acme", status=status, plan="free", limits={}, upstream_url=None,
            domains=["shop.acme.com"], keys=[], revision=revision,
        )  # fmt: skip
        return DirectoryPage(revision=revision, tenants=[changed], removed=[], full=False)

    directory.apply_page(page("suspended", 1))  # the same revision again (an overlapping poll): unchanged
    assert directory.by_id[acme_id] is acme
    directory.apply_page(page("suspended", 3))  # a newer revision replaces the entry, its keys and domains
    assert directory.by_id[acme_id].status == "suspended"
    assert directory.by_domain["shop.acme.com"].status == "suspended"
    assert "k1" not in directory.keys_by_id
    directory.apply_page(page("active", 2))  # an older revision arriving late never rolls it back
    assert directory.by_id[acme_id].status == "suspended"


#: Paths that would leave an ``upstream_url``'s prefix once an upstream decodes and normalises them.
ESCAPING_PATHS = [
    b"/..", b"/../admin", b"/a/../../admin", b"/a/..", b"/./x", b"/a/.",
    b"/%2e%2e/admin", b"/%2E%2E/admin", b"/%2e%2E/admin", b"/.%2e/admin", b"/%2e./admin", b"/%2e/x",
    b"/..%2fadmin", b"/..%2Fadmin", b"/%2e%2e%2fadmin", b"/a%2f..%2f..%2fadmin", b"/x/%2e%2e%5cadmin",
    b"/..\\admin", b"/a\\..\\..\\admin", b"/..%5cadmin", b"/..%5Cadmin",
    b"/%252e%252e/admin", b"/%25252e%25252e/admin", b"/..%252fadmin",
    b"/..;/admin", b"/..;jsessionid=1/admin", b"/%2e%2e;x/admin",
    b"*", b"", b"admin", b"%2f..%2fadmin",
]  # fmt: skip
#: Paths with dots, encodings and backslashes that stay inside the prefix.
SAFE_PATHS = [
    b"/", b"/x", b"/a/b", b"/.well-known/acme", b"/a..b", b"/a/...", b"/..a", b"/a./b", b"/file.tar.gz",
    b"/files/a%2Fb", b"/a%2e/b", b"/%2e%2e%2e/x", b"/a%20b", b"/caf%C3%A9", b"/a\\b", b"/a;b=c",
]  # fmt: skip


@pytest.mark.parametrize("path", ESCAPING_PATHS)
def test_a_dot_segment_in_any_spelling_would_escape_the_upstream_prefix(path: bytes) -> None:
    assert escapes_upstream_path(path)


@pytest.mark.parametrize("path", SAFE_PATHS)
def test_dots_and_encodings_inside_segments_stay_in_the_prefix(path: bytes) -> None:
    assert not escapes_upstream_path(path)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> GatewaySettings:
    required = {"SERVICE_TOKEN": "svc", "REDIS_URL": "redis://127.0.0.1:1/0", "API_KEY_HASH_SECRET": "s",
                "JWT_SIGNING_KEYS": "k1:x"}  # fmt: skip
    for name in ("UPSTREAM_MAX_HEADER_BYTES", "UPSTREAM_MAX_HEADERS", "UPSTREAM_HEAD_TIMEOUT",
                 "DIRECTORY_MAX_STALENESS_SECONDS", "DIRECTORY_REFRESH_SECONDS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in {**required, **env}.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings.from_env()


def test_response_limits_and_staleness_have_safe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    assert settings.upstream_max_header_bytes == 32 * 1024
    assert settings.upstream_max_headers == 100
    assert settings.upstream_head_timeout == 10.0
    assert settings.directory_max_staleness == 10.0
    assert _settings(monkeypatch, DIRECTORY_MAX_STALENESS_SECONDS="0").directory_max_staleness == 0.0


@pytest.mark.parametrize(
    "env",
    [
        {"DIRECTORY_MAX_STALENESS_SECONDS": "1", "DIRECTORY_REFRESH_SECONDS": "1"},
        {"DIRECTORY_MAX_STALENESS_SECONDS": "-1"},
        {"UPSTREAM_MAX_HEADER_BYTES": "100"},
        {"UPSTREAM_MAX_HEADERS": "2"},
        {"UPSTREAM_HEAD_TIMEOUT": "0"},
    ],
)
def test_impossible_limits_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        _settings(monkeypatch, **env)
