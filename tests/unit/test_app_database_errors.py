"""tenantry-app: which errors are a database outage, what a handler's second run reads, what counts as a commit."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from litestar import Litestar, Request, post
from litestar.testing import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from tenantry_app import (
    AppSettings,
    CredentialClient,
    CredentialsRefusedError,
    DatabaseCredentials,
    DatabaseUnavailableError,
    TenantDatabases,
    TenantryPlugin,
    connection_lost,
    database_unavailable,
    track_commits,
    worth_running_again,
)
from tenantry_app.litestar import _REPLAY_LIMIT, _Body
from tenantry_common.litestar_problems import problem_exception_handlers


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


def _dbapi_error(sqlstate: str | None, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", None, _DriverError(sqlstate), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (_dbapi_error(None, invalidated=True), True),  # "connection is closed"
        (_dbapi_error("08003"), True),  # connection was closed in the middle of an operation
        (_dbapi_error("08006"), True),
        (_dbapi_error("57P01"), True),  # terminated by an administrator, or a fast shutdown
        (_dbapi_error("57P02"), True),
        (_dbapi_error("42P01"), False),  # a bad query is the app's bug, not an outage
        (IntegrityError("INSERT", None, _DriverError("23505")), False),
        (DatabaseUnavailableError("no connection"), False),  # never connected: nothing was lost
        (OSError("the app's own I/O"), False),
    ],
)
def test_a_broken_connection_is_told_apart_from_other_errors(error: BaseException, lost: bool) -> None:
    assert connection_lost(error) is lost


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (DatabaseUnavailableError("no connection"), True),
        (_dbapi_error(None, invalidated=True), True),
        (_dbapi_error("57P01"), True),
        (_dbapi_error("23505"), False),
        (OSError("the app's own I/O"), False),
        (TimeoutError(), False),  # a handler's own timeout is not a database outage
    ],
)
def test_only_database_outages_count_as_unavailable(error: BaseException, unavailable: bool) -> None:
    assert database_unavailable(error) is unavailable


@pytest.mark.parametrize(
    ("error", "worth_it"),
    [
        (_dbapi_error("57P01"), True),  # a move's cutover ended the session
        (_dbapi_error(None, invalidated=True), True),
        (CredentialsRefusedError("28000"), True),  # the old role may no longer log in: fresh credentials may work
        (DatabaseUnavailableError("refused"), False),  # the server takes no connection: it would only fail again
        (_dbapi_error("55000"), False),  # from a statement, 55000 is the app's own (currval before nextval)
        (_dbapi_error("23505"), False),
    ],
)
def test_only_lost_connections_and_refused_credentials_are_worth_running_again(
    error: BaseException, worth_it: bool
) -> None:
    assert worth_running_again(error) is worth_it
    assert database_unavailable(error) is (worth_it or isinstance(error, DatabaseUnavailableError))


class _FixedCredentials(CredentialClient):
    def __init__(self, creds: DatabaseCredentials) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self._cache["t1"] = creds


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_server_that_refuses_connections_raises_database_unavailable() -> None:
    creds = DatabaseCredentials(host="127.0.0.1", port=_closed_port(), database="d", user="u", password="p")
    credentials = _FixedCredentials(creds)
    databases = TenantDatabases(credentials, budget=1)
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with databases.session("t1") as session:
                await session.execute(text("SELECT 1"))
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)
        assert database_unavailable(caught.value)
    finally:
        await databases.close()
        await credentials.close()


def test_commit_tracking_is_per_block_and_restored_after_it() -> None:
    with track_commits() as outer:
        with track_commits() as inner:
            inner.committed = True
        assert not outer.committed
    assert inner.committed


def _receiver(messages: list[dict[str, Any]]) -> Any:
    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def test_a_second_run_reads_the_whole_body_again() -> None:
    body = _Body(
        _receiver(
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"cd", "more_body": False},
            ]
        )
    )
    assert (await body.receive())["body"] == b"ab"
    assert (await body.receive())["body"] == b"cd"

    replay = body.replay()
    assert await replay() == {"type": "http.request", "body": b"ab", "more_body": True}
    assert await replay() == {"type": "http.request", "body": b"cd", "more_body": False}
    assert (await replay())["type"] == "http.disconnect"
    assert body.replayable


async def test_a_second_run_reads_what_the_first_left_unread_from_the_client() -> None:
    body = _Body(
        _receiver(
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"cd", "more_body": False},
            ]
        )
    )
    await body.receive()

    replay = body.replay()
    assert await replay() == {"type": "http.request", "body": b"ab", "more_body": True}
    assert await replay() == {"type": "http.request", "body": b"cd", "more_body": False}


async def test_a_body_over_the_limit_is_not_kept_and_rules_out_a_second_run() -> None:
    big = b"x" * (_REPLAY_LIMIT // 2 + 1)
    body = _Body(
        _receiver(
            [
                {"type": "http.request", "body": big, "more_body": True},
                {"type": "http.request", "body": big, "more_body": False},
            ]
        )
    )
    await body.receive()
    assert body.replayable
    await body.receive()
    assert not body.replayable


def _app(handler_error: Callable[[int], BaseException | None]) -> tuple[Litestar, list[bytes]]:
    """An app with TenantryPlugin whose ``POST /work`` (an open path: no token needed) raises what
    ``handler_error(run)`` gives for its nth run, and records the body each run read."""
    bodies: list[bytes] = []

    @post("/work", status_code=200)
    async def work(request: Request[Any, Any, Any]) -> dict[str, int]:
        bodies.append(await request.body())
        error = handler_error(len(bodies))
        if error is not None:
            raise error
        return {"runs": len(bodies)}

    settings = AppSettings(
        jwks_url="http://127.0.0.1:9/jwks.json", tenant_service_url="http://127.0.0.1:9", service_token="unused",
        redis_url=None, connection_budget=1, connections_per_tenant=1, engine_idle_seconds=60,
        application_name="unit",
    )  # fmt: skip
    app = Litestar(
        route_handlers=[work],
        plugins=[TenantryPlugin(settings, open_paths=("/work",))],
        exception_handlers=problem_exception_handlers(),
        logging_config=None,
    )
    return app, bodies


def test_a_handler_that_lost_its_connection_before_committing_runs_again_with_the_same_body() -> None:
    app, bodies = _app(lambda run: _dbapi_error(None, invalidated=True) if run == 1 else None)
    with TestClient(app) as client:
        response = client.post("/work", content=b'{"note": "once"}')
    assert response.status_code == 200, response.text
    assert response.json() == {"runs": 2}
    assert bodies == [b'{"note": "once"}'] * 2


def test_a_handler_runs_at_most_twice_then_answers_503_database_unavailable() -> None:
    app, bodies = _app(lambda run: _dbapi_error("08003"))
    with TestClient(app) as client:
        response = client.post("/work", content=b"x")
    assert len(bodies) == 2
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["code"] == "database_unavailable"


def test_a_server_that_takes_no_connection_is_503_at_once_without_a_second_run() -> None:
    app, bodies = _app(lambda run: DatabaseUnavailableError("refused"))
    with TestClient(app) as client:
        response = client.post("/work", content=b"x")
    assert len(bodies) == 1
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"


def test_credentials_refused_twice_run_the_handler_twice_then_answer_503_tenant_unavailable() -> None:
    app, bodies = _app(lambda run: CredentialsRefusedError("28000"))
    with TestClient(app) as client:
        response = client.post("/work", content=b"x")
    assert len(bodies) == 2
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "tenant_unavailable"


def test_other_database_errors_stay_the_apps_own_500_problem() -> None:
    app, bodies = _app(lambda run: _dbapi_error("42P01"))
    with TestClient(app) as client:
        response = client.post("/work", content=b"x")
    assert len(bodies) == 1
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "42P01" not in response.text
