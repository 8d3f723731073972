"""Webhook subscriptions and their deliveries (contract §13).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``secret_enc``: the signing secret sealed with the platform's secret box (ENCRYPTION_KEYS), bound to the id.
    op.execute(
        """
        CREATE TABLE webhooks (
            id uuid CONSTRAINT pk_webhooks PRIMARY KEY,
            url text NOT NULL,
            events text[] NOT NULL,
            secret_enc text NOT NULL,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            consecutive_failures integer NOT NULL DEFAULT 0,
            last_success_at timestamptz,
            last_failure_at timestamptz,
            last_error text
        )
        """
    )
    op.execute("CREATE INDEX ix_webhooks_created ON webhooks (created_at, id)")
    # One delivery per (subscription, event); the dispatcher's fan-out makes them from the outbox.
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id uuid CONSTRAINT pk_webhook_deliveries PRIMARY KEY,
            webhook_id uuid NOT NULL
                CONSTRAINT fk_webhook_deliveries_webhook_id_webhooks REFERENCES webhooks (id) ON DELETE CASCADE,
            event_id text NOT NULL
                CONSTRAINT fk_webhook_deliveries_event_id_event_outbox REFERENCES event_outbox (id) ON DELETE CASCADE,
            status text NOT NULL DEFAULT 'pending'
                CONSTRAINT ck_webhook_deliveries_status CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            retry_until timestamptz NOT NULL,
            lease_until timestamptz,
            last_status_code integer,
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_attempt_at timestamptz,
            delivered_at timestamptz,
            CONSTRAINT uq_webhook_deliveries_webhook_event UNIQUE (webhook_id, event_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending'"
    )
    op.execute("CREATE INDEX ix_webhook_deliveries_list ON webhook_deliveries (webhook_id, created_at DESC, id DESC)")
    op.execute("CREATE INDEX ix_webhook_deliveries_event ON webhook_deliveries (event_id)")
    # The dispatcher's retention: fanned-out events, oldest first.
    op.execute(
        "CREATE INDEX ix_event_outbox_fanned_out ON event_outbox (fanned_out_at) WHERE fanned_out_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_event_outbox_fanned_out")
    op.execute("DROP TABLE IF EXISTS webhook_deliveries")
    op.execute("DROP TABLE IF EXISTS webhooks")
