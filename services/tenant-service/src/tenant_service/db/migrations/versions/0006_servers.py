"""Several PostgreSQL servers: the server registry, each tenant's server, and databases kept after a move.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``url`` is the admin URL without its password; ``password_enc`` the password sealed by ENCRYPTION_KEYS. The
    # ``default`` server's connection comes from TENANT_DATABASE_URL (both columns stay empty), so rotating that
    # secret needs no registry change.
    op.execute(
        """
        CREATE TABLE servers (
            name text CONSTRAINT pk_servers PRIMARY KEY,
            url text,
            password_enc text,
            host text NOT NULL,
            port integer NOT NULL,
            state text NOT NULL DEFAULT 'active'
                CONSTRAINT ck_servers_state CHECK (state IN ('active', 'draining', 'disabled')),
            capacity integer NOT NULL CONSTRAINT ck_servers_capacity CHECK (capacity >= 0),
            labels jsonb NOT NULL DEFAULT '{}'::jsonb,
            version integer,
            can_move_online boolean NOT NULL DEFAULT false,
            template_version integer,
            system_identifier text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Existing tenants live on the default server; the row itself is written at start (it needs the settings).
    op.execute("ALTER TABLE tenants ADD COLUMN server text NOT NULL DEFAULT 'default'")
    op.execute("CREATE INDEX ix_tenants_server ON tenants (server)")
    # A database left on its old server by a move: refusing connections, dropped after MOVE_KEEP_SECONDS.
    op.execute(
        """
        CREATE TABLE retired_databases (
            server text NOT NULL,
            db_name text NOT NULL,
            db_role text NOT NULL,
            tenant_id uuid NOT NULL,
            operation_id uuid,
            drop_after timestamptz NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_retired_databases PRIMARY KEY (server, db_name)
        )
        """
    )
    # Placement: a plan may ask for servers with these labels.
    op.execute("ALTER TABLE plans ADD COLUMN placement_labels jsonb NOT NULL DEFAULT '{}'::jsonb")
    # One drain per server at a time.
    op.execute(
        "CREATE UNIQUE INDEX uq_operations_drain ON operations ((params->>'server')) "
        "WHERE kind = 'drain' AND state IN ('pending', 'running')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS uq_operations_drain")
    op.execute("DROP TABLE IF EXISTS retired_databases")
    op.execute("ALTER TABLE plans DROP COLUMN IF EXISTS placement_labels")
    op.execute("ALTER TABLE tenants DROP COLUMN IF EXISTS server")
    op.execute("DROP TABLE IF EXISTS servers")
