"""Tenant users at the gateway (contract §12): ``/_gateway/auth/*``, ``/_gateway/me``, ``/_gateway/tenant``,
``/_gateway/users[/{id}]`` and ``/_gateway/signup``.

The tenant comes from the location sources of the pipeline's first step (subdomain, custom domain,
``/t/{slug}/_gateway/…``, ``X-Tenant-ID``) or from the caller's credential, checked as for proxied requests. The
tenant-service checks passwords and refresh tokens (:mod:`gateway.auth_client`); the gateway signs the access token
with the key ring of its other tokens, so users' tokens are verified on the same path as every other. None of these
requests counts against the tenant's quota, and none reaches an upstream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import parse_qsl, quote

import msgspec

from gateway.auth_client import AuthClient, unavailable
from gateway.authenticate import Authenticator, Principal, read_credential
from gateway.directory import Directory, TenantEntry
from gateway.errors import GatewayError, bad_request
from gateway.exchange import Exchange
from gateway.http import CONTENT_LENGTH, BodyTimeoutError, ClientGoneError, MalformedBodyError
from gateway.resolve import Resolver, served
from gateway.tokens import TokenIssuer
from tenantry_common.problems import FieldError
from tenantry_common.users_api import (
    ON_BEHALF_HEADER,
    AcceptInvitationRequest,
    LoginRequest,
    PasswordChangeRequest,
    RefreshRequest,
    SessionGrant,
    SignupRequest,
    UserInfo,
    decode_session_grant,
    decode_signup_result,
    decode_tenant_info,
    decode_user_info,
)

#: The largest request body of these endpoints (413 above it).
MAX_BODY_BYTES: Final = 16 * 1024
#: Answers of ``/_gateway/tenant`` and users' ``/_gateway/me`` are reused this long (per worker): the endpoints count
#: against no quota, and usage a second old is still the truth.
_INFO_TTL: Final = 1.0
_MAX_CACHED_INFO: Final = 10_000
_JSON: Final = b"application/json"
_USER_ID: Final = re.compile(rb"[A-Za-z0-9_-]{1,64}")
#: Query parameters of ``GET /_gateway/users`` passed on, each at most this long.
_LIST_PARAMS: Final = ("limit", "cursor")
_MAX_PARAM: Final = 256
_FIELD_AT: Final = re.compile(r"at `\$\.([A-Za-z0-9_.\[\]]+)`")
_NAMED_FIELD: Final = re.compile(r"field `([A-Za-z0-9_]+)`")

T = TypeVar("T")
_Text = Annotated[str, msgspec.Meta(max_length=1024)]


class LoginBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /_gateway/auth/login``."""

    email: _Text
    password: _Text


class AcceptInvitationBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /_gateway/auth/accept-invitation``."""

    token: _Text
    password: _Text


class RefreshBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /_gateway/auth/refresh`` and ``/_gateway/auth/logout``."""

    refresh_token: _Text


class PasswordBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /_gateway/auth/password``."""

    current_password: _Text
    new_password: _Text


class SignupBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /_gateway/signup``."""

    slug: _Text
    name: _Text
    email: _Text
    password: _Text


def _field_of(message: str) -> str:
    """The field a msgspec validation message names (``$.email`` or ``field `email```), else ``body``."""
    match = _FIELD_AT.search(message) or _NAMED_FIELD.search(message)
    return match.group(1) if match else "body"


def decode_body(data: bytes, decoder: Callable[[bytes], T]) -> T:
    """The request body decoded.

    Raises:
        GatewayError: 400 ``malformed_body`` when it is not JSON; 422 ``validation_error`` naming the field when it
            is not the expected object (msgspec's messages name the field and type, never the value).
    """
    try:
        return decoder(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise GatewayError(
            "The request did not pass validation: " + message,
            code="validation_error",
            status=422,
            errors=[FieldError(field=_field_of(message), message=message)],
        ) from None
    except (msgspec.DecodeError, RecursionError):
        raise bad_request("malformed_body", "The request body is not valid JSON.") from None


async def read_body(exchange: Exchange, *, silence: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole request body, at most ``limit`` bytes, which must be JSON when its type is named; the client may
    stay silent ``silence`` seconds at a time.

    Raises:
        GatewayError: 415 ``unsupported_media_type``, 413 ``payload_too_large``, 400 ``invalid_content_length`` or
            ``invalid_request`` (bad framing), 408 ``request_timeout``.
    """
    request = exchange.request
    content_type = next((value for name, value in request.headers if name == b"content-type"), None)
    if content_type is not None:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != _JSON and not media.endswith(b"+json"):
            raise GatewayError("The request body must be JSON.", code="unsupported_media_type", status=415)
    declared = request.tracked[CONTENT_LENGTH]
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid_content_length", "Content-Length is not a number.")
        if int(declared) > limit:
            raise GatewayError("The request body is too large.", code="payload_too_large", status=413)
    if not request.has_body:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk, more = await request.receive(silence)
            size += len(chunk)
            if size > limit:
                raise GatewayError("The request body is too large.", code="payload_too_large", status=413)
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)
    except MalformedBodyError:
        raise bad_request("invalid_request", "The request body's framing is invalid.") from None
    except BodyTimeoutError:
        raise GatewayError("The request body did not arrive in time.", code="request_timeout", status=408) from None
    except ClientGoneError:
        raise GatewayError("The client closed the connection.", code="client_gone", status=499) from None


def forbidden(detail: str) -> GatewayError:
    """403 ``forbidden``: a valid credential that may not do this."""
    return GatewayError(detail, code="forbidden", status=403)


def on_behalf_of(principal: Principal) -> str:
    """Who a tenant admin is, for the tenant-service's audit: ``user:<id>`` or ``idp:<issuer id>:<sub>``."""
    if principal.user_id:
        return "user:" + principal.user_id
    return f"idp:{principal.issuer}:{principal.key_id}"


class _ShortCache:
    """Answers reused for a second: bounded, per worker."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[str, ...]) -> Any:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[str, ...], value: Any) -> None:
        if len(self._entries) >= _MAX_CACHED_INFO:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + _INFO_TTL, value)


class AccountEndpoints:
    """The endpoints of tenant users; :class:`gateway.reserved.ReservedEndpoints` routes to them."""

    def __init__(
        self,
        *,
        directory: Directory,
        resolver: Resolver,
        authenticator: Authenticator,
        tokens: TokenIssuer,
        client: AuthClient,
        body_timeout: float,
    ) -> None:
        """``body_timeout``: seconds a client may stay silent while sending its request body."""
        self._directory = directory
        self._resolver = resolver
        self._authenticator = authenticator
        self._tokens = tokens
        self._client = client
        self._body_timeout = body_timeout
        self._users = _ShortCache()
        self._tenants = _ShortCache()

    # helpers ------------------------------------------------------------------------------------------
    async def _body(self, exchange: Exchange, decoder: Callable[[bytes], T]) -> T:
        return decode_body(await read_body(exchange, silence=self._body_timeout), decoder)

    def _named_tenant(self, exchange: Exchange) -> TenantEntry | None:
        """The served tenant the location sources name; None when they name none.

        Raises:
            GatewayError: 400 ``tenant_conflict``; 404 ``tenant_not_found``; the tenant's status refusal.
        """
        location = self._resolver.locate(exchange)
        if location.named is None:
            return None
        tenant = exchange.tenant = served(location.tenant)
        return tenant

    async def _caller(self, exchange: Exchange) -> Principal:
        """The request's principal (any credential the pipeline accepts), whose tenant is the located one.

        Raises:
            GatewayError: 401 for no or a bad credential; 403 ``tenant_mismatch``; the tenant's status refusal.
        """
        location = self._resolver.locate(exchange)
        credential = read_credential(exchange.request.tracked)
        principal, exchange.tenant = await self._authenticator.identify(
            credential, location, self._resolver.locate, exchange
        )
        exchange.principal = principal
        return principal

    def _respond(self, exchange: Exchange, status: int, body: dict[str, Any] | bytes) -> int:
        encoded = body if isinstance(body, bytes) else msgspec.json.encode(body)
        headers = [(b"x-request-id", exchange.request_id), (b"cache-control", b"no-store")]
        exchange.conn.respond(exchange.request, status, encoded, _JSON, headers)
        return status

    def _no_content(self, exchange: Exchange) -> int:
        headers = [(b"x-request-id", exchange.request_id), (b"cache-control", b"no-store")]
        exchange.conn.send_complete(exchange.request, 204, headers, b"")
        return 204

    def _signed_in(self, exchange: Exchange, grant: SessionGrant, status: int = 200, **extra: Any) -> int:
        """The token pair of a grant: the gateway's access token, the tenant-service's refresh token."""
        user = grant.user
        principal = Principal(
            tenant_id=user.tenant_id,
            key_id=user.id,
            scope="",
            role=user.role,
            user_id=user.id,
            session_id=grant.session_id,
        )
        return self._respond(
            exchange,
            status,
            {
                **extra,
                "access_token": self._tokens.access_token(principal),
                "refresh_token": grant.refresh_token,
                "token_type": "Bearer",
                "expires_in": self._tokens.access_ttl,
                "refresh_expires_in": grant.refresh_expires_in,
            },
        )

    def _granted_tenant(self, grant: SessionGrant, named: TenantEntry | None) -> None:
        """The tenant a refresh or an invitation signed the user in to: the one named, if any, and served.

        Raises:
            GatewayError: 403 ``tenant_mismatch``; the tenant's status refusal.
        """
        if named is not None and named.id != grant.user.tenant_id:
            raise GatewayError("The token belongs to another tenant.", code="tenant_mismatch", status=403)
        served(self._directory.by_id.get(grant.user.tenant_id))

    # /_gateway/auth/* ---------------------------------------------------------------------------------
    async def login(self, exchange: Exchange) -> int:
        """``POST /_gateway/auth/login``: the tenant from the location, then the account in it only."""
        tenant = self._named_tenant(exchange)
        if tenant is None:
            raise bad_request(
                "tenant_required", "Name the tenant: its subdomain, custom domain, /t/{slug}/ path or X-Tenant-ID."
            )
        body = await self._body(exchange, msgspec.json.Decoder(LoginBody).decode)
        request = LoginRequest(
            tenant_id=tenant.id,
            email=body.email,
            password=body.password,
            client_address=self._resolver.client_address(exchange),
        )
        grant = await self._client.fetch(decode_session_grant, "POST", "/internal/v1/auth/login", body=request)
        if grant.user.tenant_id != tenant.id:
            raise unavailable()  # never sign a token for a tenant other than the one the client named
        return self._signed_in(exchange, grant)

    async def accept_invitation(self, exchange: Exchange) -> int:
        """``POST /_gateway/auth/accept-invitation``: the invited user sets a password and is signed in."""
        tenant = self._named_tenant(exchange)
        body = await self._body(exchange, msgspec.json.Decoder(AcceptInvitationBody).decode)
        request = AcceptInvitationRequest(
            token=body.token,
            password=body.password,
            client_address=self._resolver.client_address(exchange),
            tenant_id=tenant.id if tenant is not None else None,
        )
        path = "/internal/v1/auth/accept-invitation"
        grant = await self._client.fetch(decode_session_grant, "POST", path, body=request)
        self._granted_tenant(grant, tenant)
        return self._signed_in(exchange, grant)

    async def refresh(self, exchange: Exchange) -> int:
        """``POST /_gateway/auth/refresh``: a new pair; the refresh token presented is spent."""
        tenant = self._named_tenant(exchange)
        body = await self._body(exchange, msgspec.json.Decoder(RefreshBody).decode)
        request = RefreshRequest(refresh_token=body.refresh_token, tenant_id=tenant.id if tenant else None)
        grant = await self._client.fetch(decode_session_grant, "POST", "/internal/v1/auth/refresh", body=request)
        self._granted_tenant(grant, tenant)
        return self._signed_in(exchange, grant)

    async def logout(self, exchange: Exchange) -> int:
        """``POST /_gateway/auth/logout``: the refresh token's whole family is revoked."""
        tenant = self._named_tenant(exchange)
        body = await self._body(exchange, msgspec.json.Decoder(RefreshBody).decode)
        request = RefreshRequest(refresh_token=body.refresh_token, tenant_id=tenant.id if tenant else None)
        await self._client.call("POST", "/internal/v1/auth/logout", body=request)
        return self._no_content(exchange)

    async def password(self, exchange: Exchange) -> int:
        """``POST /_gateway/auth/password``: a signed-in user's new password; the user's other sessions end."""
        principal = await self._caller(exchange)
        if not principal.user_id:
            raise forbidden("Only a signed-in user can change their password.")
        body = await self._body(exchange, msgspec.json.Decoder(PasswordBody).decode)
        request = PasswordChangeRequest(
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            session_id=principal.session_id,
            current_password=body.current_password,
            new_password=body.new_password,
            client_address=self._resolver.client_address(exchange),
        )
        await self._client.call("POST", "/internal/v1/auth/password", body=request)
        return self._no_content(exchange)

    # the caller and its tenant ------------------------------------------------------------------------
    async def me(self, exchange: Exchange) -> int:
        """``GET /_gateway/me``: the caller, a user, an API key or an external issuer's subject."""
        principal = await self._caller(exchange)
        tenant_id = principal.tenant_id
        if principal.user_id:
            user = await self._user(tenant_id, principal.user_id)
            answer: dict[str, Any] = {
                "type": "user",
                "id": user.id,
                "email": user.email,
                "name": user.name,
                "role": user.role,
                "tenant_id": tenant_id,
            }
        elif principal.issuer:
            answer = {
                "type": "external",
                "subject": principal.key_id,
                "issuer": principal.issuer,
                "role": principal.role or None,
                "scopes": principal.scope.split(),
                "tenant_id": tenant_id,
            }
        else:
            answer = {
                "type": "api_key",
                "key_id": principal.key_id,
                "scopes": principal.scope.split(),
                "tenant_id": tenant_id,
            }
        return self._respond(exchange, 200, answer)

    async def _user(self, tenant_id: str, user_id: str) -> UserInfo:
        cached: UserInfo | None = self._users.get((tenant_id, user_id))
        if cached is None:
            path = f"/internal/v1/tenants/{quote(tenant_id, safe='')}/users/{quote(user_id, safe='')}"
            cached = await self._client.fetch(decode_user_info, "GET", path)
            self._users.put((tenant_id, user_id), cached)
        return cached

    async def tenant(self, exchange: Exchange) -> int:
        """``GET /_gateway/tenant``: the caller's tenant, its limits and usage."""
        principal = await self._caller(exchange)
        body: bytes | None = self._tenants.get((principal.tenant_id,))
        if body is None:
            path = f"/internal/v1/tenants/{quote(principal.tenant_id, safe='')}/info"
            body = msgspec.json.encode(await self._client.fetch(decode_tenant_info, "GET", path))
            self._tenants.put((principal.tenant_id,), body)
        return self._respond(exchange, 200, body)

    # the tenant's admins manage its users -------------------------------------------------------------
    async def users(self, exchange: Exchange, user_ref: bytes | None) -> int:
        """``GET|POST /_gateway/users`` and ``PATCH|DELETE /_gateway/users/{id}`` for the tenant's admins.

        Raises:
            GatewayError: 404 ``not_found`` for a malformed id, 403 ``forbidden`` for any role but admin (and for
                API keys), 405 for other methods; the caller's refusals.
        """
        request = exchange.request
        method = request.method
        allowed = ("PATCH", "DELETE") if user_ref is not None else ("GET", "POST")
        if method not in allowed:
            raise GatewayError(
                "Method not allowed.", code="method_not_allowed", status=405, headers={"allow": ", ".join(allowed)}
            )
        if user_ref is not None and not _USER_ID.fullmatch(user_ref):
            raise GatewayError("No such user.", code="not_found", status=404)
        principal = await self._caller(exchange)
        if principal.role != "admin":
            raise forbidden("Only the tenant's admins manage its users.")
        path = f"/internal/v1/tenants/{quote(principal.tenant_id, safe='')}/users"
        if user_ref is not None:
            path += "/" + user_ref.decode("ascii")
        body: bytes | None = None
        if method in ("POST", "PATCH"):
            body = await read_body(exchange, silence=self._body_timeout)
            decode_body(body, msgspec.json.decode)  # JSON at least; the tenant-service checks the shape
        response = await self._client.call(
            method,
            path,
            body=body,
            params=self._list_params(request.query) if method == "GET" else None,
            headers={ON_BEHALF_HEADER: on_behalf_of(principal)},
        )
        if response.status_code == 204 or not response.content:
            return self._no_content(exchange)
        return self._respond(exchange, response.status_code, response.content)

    @staticmethod
    def _list_params(query: bytes) -> dict[str, str]:
        """``limit`` and ``cursor`` of the client's query string, bounded; anything else is dropped."""
        params: dict[str, str] = {}
        try:
            pairs = parse_qsl(query.decode("latin-1"), max_num_fields=16)
        except ValueError:
            raise bad_request("invalid_query", "The query string has too many parameters.") from None
        for name, value in pairs:
            if name in _LIST_PARAMS:
                if len(value) > _MAX_PARAM:
                    raise GatewayError(
                        f"{name} is too long.",
                        code="validation_error",
                        status=422,
                        errors=[FieldError(field=name, message=f"at most {_MAX_PARAM} characters")],
                    )
                params[name] = value
        return params

    # sign-up ------------------------------------------------------------------------------------------
    async def signup(self, exchange: Exchange) -> int:
        """``POST /_gateway/signup``: a new tenant and its first admin, signed in (the tenant-service answers 404
        while SIGNUP_ENABLED is off). The request's location is not read: a sign-up names its tenant in its body.
        """
        body = await self._body(exchange, msgspec.json.Decoder(SignupBody).decode)
        request = SignupRequest(
            slug=body.slug,
            name=body.name,
            email=body.email,
            password=body.password,
            client_address=self._resolver.client_address(exchange),
        )
        result = await self._client.fetch(decode_signup_result, "POST", "/internal/v1/auth/signup", body=request)
        if result.grant.user.tenant_id != result.tenant.id:
            raise unavailable()
        return self._signed_in(exchange, result.grant, 201, tenant=msgspec.to_builtins(result.tenant))
