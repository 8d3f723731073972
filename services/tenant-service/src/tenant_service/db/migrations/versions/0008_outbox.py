"""The event outbox: platform events written in the transaction of the change that causes them (contract §13).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``id`` is the event's id (the ``webhook-id`` receivers deduplicate on); ``seq`` orders the events; ``body`` is
    # the delivered document {"type", "timestamp", "data"}. ``fanned_out_at``: when its deliveries were queued.
    op.execute(
        """
        CREATE TABLE event_outbox (
            id text CONSTRAINT pk_event_outbox PRIMARY KEY,
            seq bigserial NOT NULL CONSTRAINT uq_event_outbox_seq UNIQUE,
            type text NOT NULL,
            tenant_id uuid,
            body jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            fanned_out_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_event_outbox_pending ON event_outbox (seq) WHERE fanned_out_at IS NULL")
    op.execute("CREATE INDEX ix_event_outbox_tenant ON event_outbox (tenant_id, seq)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS event_outbox")
