"""The status a soft delete left, so that a restore returns a suspended tenant to ``suspended``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tenants deleted before this column existed keep NULL, which restores to ``active`` as before.
    op.execute("ALTER TABLE tenants ADD COLUMN status_before_delete text")


def downgrade() -> None:
    op.execute("ALTER TABLE tenants DROP COLUMN IF EXISTS status_before_delete")
