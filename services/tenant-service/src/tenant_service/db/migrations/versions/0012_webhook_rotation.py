"""Webhook updates and secret rotation (docs/webhooks.md): the secret a rotation replaced keeps signing, next to the
new one, until ``previous_secret_until``, so receivers can switch without losing a delivery.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Sealed like ``secret_enc`` (bound to the same webhook's context); both NULL, or both set.
    op.execute(
        """
        ALTER TABLE webhooks
            ADD COLUMN previous_secret_enc text,
            ADD COLUMN previous_secret_until timestamptz,
            ADD COLUMN updated_at timestamptz,
            ADD CONSTRAINT ck_webhooks_previous_secret
                CHECK ((previous_secret_enc IS NULL) = (previous_secret_until IS NULL))
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE webhooks
            DROP CONSTRAINT IF EXISTS ck_webhooks_previous_secret,
            DROP COLUMN IF EXISTS updated_at,
            DROP COLUMN IF EXISTS previous_secret_until,
            DROP COLUMN IF EXISTS previous_secret_enc
        """
    )
