"""Per-endpoint fairness of webhook deliveries (docs/webhooks.md): a claim takes at most
``WEBHOOK_ENDPOINT_CONCURRENCY`` deliveries of one webhook at a time, so it looks up each webhook's due deliveries
and its deliveries in flight (leased) by index.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_pending ON webhook_deliveries (webhook_id, next_attempt_at) "
        "WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX ix_webhook_deliveries_leased ON webhook_deliveries (webhook_id) "
        "WHERE status = 'pending' AND lease_until IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_webhook_deliveries_leased")
    op.execute("DROP INDEX IF EXISTS ix_webhook_deliveries_pending")
