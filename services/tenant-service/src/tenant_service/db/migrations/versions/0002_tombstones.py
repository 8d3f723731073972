"""Tombstones of purged tenants, so gateways syncing by revision learn of removals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_tombstones (
            tenant_id uuid PRIMARY KEY,
            revision bigint NOT NULL DEFAULT nextval('tenant_revision_seq'),
            removed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_tenant_tombstones_revision ON tenant_tombstones (revision)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS tenant_tombstones")
