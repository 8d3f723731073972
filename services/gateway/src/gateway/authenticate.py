"""Step 2 — authenticate: an API key or a JWT, each checked cheaply enough for every request.

The credential is ``X-API-Key: tk_…``, or ``Authorization: Bearer`` with an API key or a JWT; the header it came
in is never forwarded. Then the credential's tenant must be the one the location sources name (403
``tenant_mismatch``) and one that is served (404, 403, 503 by its status).

API keys: the checksum rejects malformed keys without any lookup; the keyed hash is looked up in memory.
JWTs: the algorithm is fixed by configuration; verified tokens are cached until they expire, so the signature
is checked once per token, not once per request. Every defect gives the same 401.

External JWTs (a tenant's own identity provider): a token whose ``iss`` is not the gateway's is looked up by
its ``iss`` and ``aud`` among the issuers tenants configured; no match is a 401 without any network call. A
match is verified with a key from that issuer's JWKS (see :mod:`gateway.jwks`) and the algorithms configured
for it; ``exp``, ``iss``, ``aud`` and ``sub`` are required. The principal is the token's tenant, its ``sub`` and
its ``scope`` (or ``scp``), and its role when the issuer names a ``role_claim`` (:func:`claimed_role`).
Removing the issuer from the tenant revokes its cached tokens with the next sync.

Users' access tokens (contract §12) are the gateway's own JWTs with ``sub`` = the user's id, a ``role`` and a
``sid`` (the session, a refresh-token family): their tenant must exist and the session must not be among the
tenant's revoked sessions, which the directory feed carries, so a logout or a password change ends the session at
every gateway within seconds. API keys' tokens carry no ``role`` and are checked as before.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import jwt

from gateway.directory import Directory, DirectorySync, IssuerEntry, KeyEntry, TenantEntry
from gateway.errors import GatewayError, unauthorized
from gateway.http import API_KEY, AUTHORIZATION
from gateway.jwks import JwksCache
from gateway.resolve import Location, served
from tenantry_common.apikeys import hash_api_key, is_well_formed, looks_like_api_key
from tenantry_common.jwt_keys import InvalidTokenError, KeyRing
from tenantry_common.users_api import ROLES

if TYPE_CHECKING:
    from gateway.exchange import Exchange

_MAX_CACHED_TOKENS = 100_000
#: External tokens are minted by tenants' identity providers, not by the platform: fewer are cached, and their
#: ``sub`` and ``scope`` are bounded, so no tenant's IdP can grow the gateway's memory without limit.
_MAX_CACHED_EXTERNAL = 20_000
_MAX_EXTERNAL_SUB = 256
_MAX_EXTERNAL_SCOPE = 1024
_MAX_CACHED_DIGESTS = 100_000
#: Roles by rank: a principal several values map to gets the highest.
_ROLE_RANK: Final = {role: len(ROLES) - rank for rank, role in enumerate(ROLES)}
#: At most this many values of an external token's role claim are looked at, each at most this long.
_MAX_ROLE_VALUES: Final = 64
_MAX_ROLE_VALUE = 256
_MAX_SESSION_ID = 64


class Principal(NamedTuple):
    """Who is calling: a tenant, and the API key, user or external subject the credential stands for (built per
    request: a NamedTuple)."""

    tenant_id: str
    #: The API key's id; for a user, the user's id; for an external issuer's token, its ``sub``.
    key_id: str
    scope: str
    #: The external issuer's id for a token of a tenant's own identity provider ("" for API keys and the
    #: gateway's own tokens); ``key_id`` is then the token's ``sub``.
    issuer: str = ""
    #: ``admin``, ``user`` or ``viewer`` for a user, or an external token whose issuer maps one; "" otherwise.
    role: str = ""
    #: The user's id for a tenant user's access token ("" for every other credential).
    user_id: str = ""
    #: The user's session (refresh-token family) the access token belongs to.
    session_id: str = ""


#: Refusals a directory a moment behind the registry may give for a tenant or key made just now (see identify).
MAYBE_STALE: Final = frozenset({"unauthorized", "tenant_not_found", "tenant_conflict", "tenant_unavailable"})


class Credential(NamedTuple):
    """The request's credential, as sent (built per request: a NamedTuple)."""

    #: The header it came in: ``x-api-key`` or ``authorization`` (not forwarded).
    header: bytes
    value: str
    is_api_key: bool


def read_credential(tracked: list[bytes | None]) -> Credential:
    """The credential of a request's noted headers (``Request.tracked``): ``X-API-Key`` first, else a bearer
    ``Authorization`` holding an API key or a JWT.

    Raises:
        GatewayError: 401 when there is none (checking the credential is :class:`Authenticator`'s).
    """
    api_key = tracked[API_KEY]
    if api_key is not None:
        return Credential(b"x-api-key", api_key.decode("latin-1").strip(), True)
    authorization = tracked[AUTHORIZATION]
    if authorization is not None:
        scheme, _, credential = authorization.decode("latin-1").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and credential:
            return Credential(b"authorization", credential, looks_like_api_key(credential))
    raise unauthorized()


class Authenticator:
    """Turns the request's credential into a :class:`Principal`."""

    def __init__(
        self,
        directory: Directory,
        hash_secret: bytes,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        leeway: float,
        jwks: JwksCache | None = None,
    ) -> None:
        """``jwks``: where the keys of tenants' external issuers come from (None: only the gateway's own tokens)."""
        self._directory = directory
        self._secret = hash_secret
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        # Well-formed keys seen recently → their keyed hash: the checksum and HMAC run once per key, not per request.
        self._digests: dict[str, bytes] = {}
        self._verified: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._external: OrderedDict[str, tuple[Principal, IssuerEntry, float]] = OrderedDict()
        self.jwks = jwks
        #: Its catch_up() waits for a pending change event's fetch; True when one was applied and the request may
        #: be decided again. None: refusals stand as the directory has them.
        self.sync: DirectorySync | None = None

    async def identify(
        self,
        credential: Credential,
        location: Location | None,
        locate: Callable[[Exchange], Location | None],
        exchange: Exchange,
    ) -> tuple[Principal, TenantEntry]:
        """The credential's principal and its tenant, which must be the one ``location`` names, if it names one.

        A refusal that may come from a directory a moment behind the registry (an unknown key, an unknown or
        conflicting tenant, one not ready yet: a tenant or key made just before this request) is decided once more,
        with the location ``locate(exchange)`` finds then, when the fetch of a change event that arrived before it was
        still under way (DirectorySync.catch_up; no fetch pending: the refusal stands at once).

        Raises:
            GatewayError: :meth:`principal`'s, :meth:`external`'s and :meth:`tenant_of`'s refusals.
        """
        try:
            return await self._identify(credential, location)
        except GatewayError as problem:
            return await self.again(problem, credential, locate, exchange)

    async def again(
        self,
        problem: GatewayError,
        credential: Credential,
        locate: Callable[[Exchange], Location | None],
        exchange: Exchange,
    ) -> tuple[Principal, TenantEntry]:
        """:meth:`identify`'s second decision, for a caller that made the first itself (the proxy's hot path).

        Raises:
            GatewayError: ``problem`` when no change event's fetch was pending (or it did not end in time); else
                the second decision's refusal.
        """
        sync = self.sync
        if sync is None or not sync.pending or problem.code not in MAYBE_STALE or not await sync.catch_up():
            raise problem
        return await self._identify(credential, locate(exchange))

    async def _identify(self, credential: Credential, location: Location | None) -> tuple[Principal, TenantEntry]:
        principal = self.principal(credential)
        if principal is None:
            principal = await self.external(credential.value)
        return principal, self.tenant_of(principal, location)

    def use_keys(self, keys: KeyRing) -> None:
        """Verify with a new key ring from now on; tokens verified with the old one are checked again."""
        self._keys = keys
        self._verified.clear()

    def _usable_key(self, key: KeyEntry | None, now: float) -> KeyEntry:
        if key is None or not key.usable(now):
            raise unauthorized()
        tenant = self._directory.by_id.get(key.tenant_id)
        if tenant is None:
            raise unauthorized()
        return key

    def principal(self, credential: Credential) -> Principal | None:
        """The principal of the credential; None for a token of a tenant's external issuer that is not verified
        yet (:meth:`external` verifies it).

        Raises:
            GatewayError: 401 for any defect of the credential.
        """
        if credential.is_api_key:
            return self.api_key(credential.value)
        return self.jwt(credential.value)

    def tenant_of(self, principal: Principal, location: Location | None = None) -> TenantEntry:
        """The principal's tenant, which must be the one the location names (when it names one) and be served.

        Raises:
            GatewayError: 404 ``tenant_not_found`` when the location names an unknown tenant, 403
                ``tenant_mismatch`` when it names another one; the tenant's status refusal otherwise (see
                :func:`gateway.resolve.served`).
        """
        if location is not None and location.named is not None and location.named != principal.tenant_id:
            if location.tenant is None:
                raise GatewayError("No such tenant.", code="tenant_not_found", status=404)
            raise GatewayError("The credential belongs to another tenant.", code="tenant_mismatch", status=403)
        return served(self._directory.by_id.get(principal.tenant_id))

    def api_key(self, key: str) -> Principal:
        """The principal of an API key.

        Raises:
            GatewayError: 401 for malformed, unknown, revoked or expired keys alike.
        """
        digest = self._digests.get(key)
        if digest is None:
            if not is_well_formed(key):
                raise unauthorized()
            digest = hash_api_key(key, self._secret)
            if len(self._digests) >= _MAX_CACHED_DIGESTS:
                self._digests.clear()
            self._digests[key] = digest
        entry = self._usable_key(self._directory.keys_by_hash.get(digest), time.time())
        return Principal(tenant_id=entry.tenant_id, key_id=entry.id, scope=entry.scopes)

    def _claims(self, token: str, now: float) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None and cached[1] > now - self._leeway:
            return cached[0]
        if len(token) > 8192:
            raise unauthorized()
        try:
            claims = self._keys.verify(token, audience=self._audience, issuer=self._issuer, leeway=self._leeway)
        except InvalidTokenError:
            raise unauthorized() from None
        if not isinstance(claims.get("tid"), str) or not isinstance(claims.get("exp"), int | float):
            raise unauthorized()
        self._verified[token] = (claims, float(claims["exp"]))
        if len(self._verified) > _MAX_CACHED_TOKENS:
            self._verified.popitem(last=False)
        return claims

    def jwt(self, token: str) -> Principal | None:
        """The principal of an access token; the API key it was issued for must still be usable.

        None for a token of a tenant's external issuer that is not verified yet: :meth:`external` verifies it.

        Raises:
            GatewayError: 401 for any defect, and for a token whose API key was revoked since.
        """
        now = time.time()
        if token not in self._verified:  # the gateway's own tokens, once verified, skip the external checks
            external = self._external.get(token)
            if external is not None:
                return self._external_principal(token, external, now)
            if self._external_issuer(token) is not None:
                return None
        claims = self._claims(token, now)
        if claims["exp"] + self._leeway <= now:
            self._verified.pop(token, None)
            raise unauthorized()
        if "role" in claims:  # a tenant user's token (API keys' tokens carry no role)
            return self._user(claims)
        key = self._usable_key(self._directory.keys_by_id.get(str(claims.get("sub"))), now)
        if key.tenant_id != claims["tid"]:
            raise unauthorized()
        return Principal(tenant_id=key.tenant_id, key_id=key.id, scope=str(claims.get("scope", "")))

    def _user(self, claims: dict[str, Any]) -> Principal:
        """The principal of a tenant user's access token: a known role, a tenant that exists, a live session.

        Raises:
            GatewayError: 401 otherwise (a revoked session is refused like any other defect).
        """
        role, user_id, session_id = claims["role"], claims.get("sub"), claims.get("sid")
        if role not in _ROLE_RANK or not isinstance(user_id, str) or not user_id:
            raise unauthorized()
        if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_SESSION_ID:
            raise unauthorized()
        tenant = self._directory.by_id.get(claims["tid"])
        if tenant is None or session_id in tenant.revoked_sessions:
            raise unauthorized()
        scope = claims.get("scope", "")
        return Principal(
            tenant_id=tenant.id,
            key_id=user_id,
            scope=scope if isinstance(scope, str) else "",
            role=role,
            user_id=user_id,
            session_id=session_id,
        )

    # external issuers ---------------------------------------------------------------------------------
    def _external_issuer(self, token: str) -> str | None:
        """The token's ``iss`` when it is not the gateway's (read without verifying: only to pick the keys)."""
        if self.jwks is None or not self._directory.issuers or len(token) > 8192:
            return None
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer == self._issuer:
            return None
        return issuer

    def _external_principal(
        self, token: str, cached: tuple[Principal, IssuerEntry, float], now: float
    ) -> Principal | None:
        """The cached principal; None when the issuer's role mapping changed since (verify the token again)."""
        principal, issuer, expires = cached
        current = self._directory.issuers.get(issuer.issuer, {}).get(issuer.audience)
        if expires + self._leeway <= now or current is None or current.id != issuer.id:
            self._external.pop(token, None)  # expired, or the tenant no longer trusts this issuer
            raise unauthorized()
        if current is not issuer and (current.role_claim != issuer.role_claim or current.role_map != issuer.role_map):
            self._external.pop(token, None)
            return None
        return principal

    def _match(self, claims: dict[str, Any]) -> IssuerEntry:
        """The one configured issuer the token's ``iss`` and ``aud`` name (401 when none, or several)."""
        iss, aud = claims.get("iss"), claims.get("aud")
        audiences = self._directory.issuers.get(iss) if isinstance(iss, str) else None
        names = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        matches = {}
        if audiences:
            for name in names:
                if isinstance(name, str) and (entry := audiences.get(name)) is not None:
                    matches[entry.id] = entry
        if len(matches) != 1:
            raise unauthorized()
        return next(iter(matches.values()))

    async def external(self, token: str) -> Principal:
        """Verify a token of a tenant's external issuer (fetching its keys when needed) and cache it.

        Raises:
            GatewayError: 401 for any defect: unknown issuer or audience, unknown ``kid`` after one rate-limited
                JWKS refetch, a bad signature, a missing or expired claim, an algorithm not configured.
        """
        if self.jwks is None:
            raise unauthorized()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise unauthorized() from None
        issuer = self._match(unverified)
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in issuer.algorithms or not (kid is None or isinstance(kid, str)):
            raise unauthorized()
        key = await self.jwks.key(issuer.jwks_url, kid, algorithm)
        if key is None:
            raise unauthorized()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError:
            raise unauthorized() from None
        subject, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(subject, str) or not 0 < len(subject) <= _MAX_EXTERNAL_SUB:
            raise unauthorized()
        if not isinstance(expires, int | float):
            raise unauthorized()
        current = self._directory.issuers.get(issuer.issuer, {}).get(issuer.audience)
        if current is None or current.id != issuer.id:
            raise unauthorized()  # the directory changed while the keys were fetched
        scope = claims.get("scope", claims.get("scp", ""))
        if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scope = " ".join(scope)
        if not isinstance(scope, str) or len(scope) > _MAX_EXTERNAL_SCOPE:
            raise unauthorized()  # neither a string nor a list of strings, or beyond reason
        role = claimed_role(claims, issuer.role_claim, issuer.role_map) if issuer.role_claim else ""
        principal = Principal(tenant_id=issuer.tenant_id, key_id=subject, scope=scope, issuer=issuer.id, role=role)
        self._external[token] = (principal, issuer, float(expires))
        if len(self._external) > _MAX_CACHED_EXTERNAL:
            self._external.popitem(last=False)
        return principal


def claimed_role(claims: Mapping[str, Any], role_claim: str, role_map: Mapping[str, str]) -> str:
    """The role an external token's claims give: ``admin``, ``user``, ``viewer`` or "" (none).

    ``role_claim`` names a claim, or a dotted path into nested claims (``realm_access.roles``); a claim whose name
    itself holds dots (``https://example.com/roles``) is found too. Its value is a string or a list of strings.
    With a ``role_map`` each value is mapped (values it does not name give nothing), else values that are roles
    count as such. Several roles: the highest (admin > user > viewer).
    """
    value: Any = claims.get(role_claim)
    if value is None and "." in role_claim:
        value = claims
        for part in role_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    values = [value] if isinstance(value, str) else value[:_MAX_ROLE_VALUES] if isinstance(value, list) else []
    best, best_rank = "", 0
    for candidate in values:
        if not isinstance(candidate, str) or len(candidate) > _MAX_ROLE_VALUE:
            continue
        role = role_map.get(candidate, "") if role_map else candidate
        rank = _ROLE_RANK.get(role, 0)
        if rank > best_rank:
            best, best_rank = role, rank
    return best
