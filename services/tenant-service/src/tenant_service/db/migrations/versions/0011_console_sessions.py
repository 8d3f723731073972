"""Sessions of the admin console (docs/console.md): only a SHA-256 of each session id is kept, never a token.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``id_hash``: SHA-256 of the cookie's random 256-bit session id. ``actor``: "admin:<token name>", as the admin
    # API records it. ``csrf_secret``: the per-session secret every form's token is derived from. ``token_mac``:
    # HMAC-SHA256 of the admin token keyed by that secret, so that a token removed or changed in the configuration
    # ends its sessions (the token itself is never stored).
    op.execute(
        """
        CREATE TABLE console_sessions (
            id_hash bytea CONSTRAINT pk_console_sessions PRIMARY KEY,
            actor text NOT NULL,
            csrf_secret bytea NOT NULL,
            token_mac bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_console_sessions_created_at ON console_sessions (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS console_sessions")
