"""The console's sign-in throttle reads the audit log (docs/console.md): failed sign-ins from an address since its
last successful one, within the window, shared by every replica and kept across restarts. This partial index makes
that a lookup of a few entries.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_audit_console_sign_in ON audit_log (target, id) "
        "WHERE action IN ('console.sign_in', 'console.sign_in_failed')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_audit_console_sign_in")
