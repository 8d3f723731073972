"""The event outbox (contract §13): an event commits with the change that causes it, or not at all."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from tenant_service.context import AppContext
from tenant_service.db.models import OutboxEvent
from tenant_service.outbox import EVENT_TYPES, emit


async def test_an_event_commits_with_its_change_or_not_at_all(ctx: AppContext) -> None:
    tenant_id = uuid.uuid4()
    async with ctx.sessions() as session, session.begin():
        kept = emit(session, "tenant.updated", {"tenant": {"name": "x"}}, tenant_id=tenant_id, slug="acme")

    async def failing_change() -> None:
        async with ctx.sessions() as session, session.begin():
            emit(session, "tenant.updated", {}, tenant_id=tenant_id, slug="acme")
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    async with ctx.sessions() as session:
        rows = list((await session.execute(select(OutboxEvent).where(OutboxEvent.tenant_id == tenant_id))).scalars())
    assert [row.id for row in rows] == [kept.id]
    body = rows[0].body
    assert body["type"] == "tenant.updated"
    assert body["data"] == {"tenant_id": str(tenant_id), "slug": "acme", "tenant": {"name": "x"}}
    assert body["timestamp"].endswith("Z")
    assert rows[0].seq > 0
    assert rows[0].fanned_out_at is None
    assert kept.id.startswith("msg_")
    assert "quota.threshold" in EVENT_TYPES
    assert len(EVENT_TYPES) == 13


async def test_secrets_in_event_data_are_masked_before_they_are_stored(ctx: AppContext) -> None:
    # A tenant's free text (its name, its settings) may hold a secret someone pasted; event bodies are kept in the
    # registry and sent to other systems, so anything shaped like one is masked (docs/webhooks.md).
    tenant_id = uuid.uuid4()
    key = "tk_" + "A1b2C3d4" * 5
    data = {
        "name": f"ours {key}",
        "settings": {"notes": ["Bearer abc.def-ghi", "postgresql://app:hunter2@db/x"], "size": 3},
    }
    async with ctx.sessions() as session, session.begin():
        emit(session, "tenant.updated", data, tenant_id=tenant_id, slug="acme")
    async with ctx.sessions() as session:
        row = (await session.execute(select(OutboxEvent).where(OutboxEvent.tenant_id == tenant_id))).scalar_one()
    stored = row.body["data"]
    text = repr(stored)
    assert key[3:] not in text
    assert "hunter2" not in text
    assert "abc.def-ghi" not in text
    assert stored["name"].startswith("ours tk_")
    assert stored["settings"]["size"] == 3
    assert stored["slug"] == "acme"
