"""Tenant users: accounts, invitations, sessions and refresh tokens; role claims of external issuers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An email is unique per tenant (case-insensitive: ``email_key`` is its lower-case form), never across tenants:
    # the same person may be a user of several tenants, each with its own password and role. Every lookup names the
    # tenant first.
    op.execute(
        """
        CREATE TABLE tenant_users (
            id uuid CONSTRAINT pk_tenant_users PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_tenant_users_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            email text NOT NULL,
            email_key text NOT NULL,
            name text,
            role text NOT NULL CONSTRAINT ck_tenant_users_role CHECK (role IN ('admin', 'user', 'viewer')),
            password_hash text,
            disabled boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            password_changed_at timestamptz,
            last_login_at timestamptz,
            CONSTRAINT uq_tenant_users_tenant_email UNIQUE (tenant_id, email_key)
        )
        """
    )
    op.execute("CREATE INDEX ix_tenant_users_tenant_created ON tenant_users (tenant_id, created_at, id)")
    # Tokens are stored as SHA-256 digests only (they are 256-bit random: no salt or slow hash needed).
    op.execute(
        """
        CREATE TABLE user_invitations (
            token_hash bytea CONSTRAINT pk_user_invitations PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_user_invitations_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            user_id uuid NOT NULL CONSTRAINT fk_user_invitations_user_id_tenant_users
                REFERENCES tenant_users (id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_user_invitations_user ON user_invitations (user_id)")
    # A session is one sign-in's family of refresh tokens. It outlives its user (user_id set null) for a day, so
    # gateways keep refusing the access tokens of a deleted user's sessions until they expire.
    op.execute(
        """
        CREATE TABLE user_sessions (
            id uuid CONSTRAINT pk_user_sessions PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_user_sessions_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            user_id uuid CONSTRAINT fk_user_sessions_user_id_tenant_users
                REFERENCES tenant_users (id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            last_used_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            revoked_reason text
        )
        """
    )
    op.execute("CREATE INDEX ix_user_sessions_user ON user_sessions (user_id) WHERE revoked_at IS NULL")
    op.execute("CREATE INDEX ix_user_sessions_revoked ON user_sessions (tenant_id, revoked_at)")
    op.execute(
        """
        CREATE TABLE refresh_tokens (
            token_hash bytea CONSTRAINT pk_refresh_tokens PRIMARY KEY,
            session_id uuid NOT NULL CONSTRAINT fk_refresh_tokens_session_id_user_sessions
                REFERENCES user_sessions (id) ON DELETE CASCADE,
            issued_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_refresh_tokens_session ON refresh_tokens (session_id)")
    op.execute("ALTER TABLE tenant_jwt_issuers ADD COLUMN role_claim text")
    op.execute("ALTER TABLE tenant_jwt_issuers ADD COLUMN role_map jsonb NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE tenant_jwt_issuers DROP COLUMN IF EXISTS role_map")
    op.execute("ALTER TABLE tenant_jwt_issuers DROP COLUMN IF EXISTS role_claim")
    for table in ("refresh_tokens", "user_sessions", "user_invitations", "tenant_users"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
