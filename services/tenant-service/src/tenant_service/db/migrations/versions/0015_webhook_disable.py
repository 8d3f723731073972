"""Webhooks that keep failing are disabled (docs/webhooks.md): ``failing_since`` is when the current run of failed
attempts began, ``disabled_at`` and ``disabled_reason`` say that (and why) nothing is sent to the webhook until an admin
enables it again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE webhooks
            ADD COLUMN failing_since timestamptz,
            ADD COLUMN disabled_at timestamptz,
            ADD COLUMN disabled_reason text
        """
    )
    # A webhook failing now has been failing since its last failure at least (the best the registry knows).
    op.execute("UPDATE webhooks SET failing_since = last_failure_at WHERE consecutive_failures > 0")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE webhooks DROP COLUMN IF EXISTS disabled_reason, DROP COLUMN IF EXISTS disabled_at, "
        "DROP COLUMN IF EXISTS failing_since"
    )
