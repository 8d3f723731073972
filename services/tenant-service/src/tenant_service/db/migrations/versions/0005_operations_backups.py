"""Long-running operations, backups, exports, per-tenant data keys and the cutover hold.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Operations outlive their tenant (a purged tenant's history stays readable): no foreign key on tenant_id.
    op.execute(
        """
        CREATE TABLE operations (
            id uuid CONSTRAINT pk_operations PRIMARY KEY,
            kind text NOT NULL CONSTRAINT ck_operations_kind
                CHECK (kind IN ('backup', 'restore', 'clone', 'export', 'move', 'drain')),
            state text NOT NULL CONSTRAINT ck_operations_state
                CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
            tenant_id uuid,
            params jsonb NOT NULL DEFAULT '{}'::jsonb,
            step text,
            progress jsonb NOT NULL DEFAULT '{}'::jsonb,
            checkpoint jsonb NOT NULL DEFAULT '{}'::jsonb,
            error jsonb,
            result jsonb,
            attempts integer NOT NULL DEFAULT 0,
            cancel_requested boolean NOT NULL DEFAULT false,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_operations_created ON operations (created_at DESC, id DESC)")
    op.execute("CREATE INDEX ix_operations_tenant ON operations (tenant_id, created_at DESC)")
    op.execute("CREATE INDEX ix_operations_open ON operations (created_at) WHERE state IN ('pending', 'running')")
    # At most one restore, clone or move at a time per tenant: they replace or relocate its database.
    op.execute(
        "CREATE UNIQUE INDEX uq_operations_exclusive ON operations (tenant_id) "
        "WHERE kind IN ('restore', 'clone', 'move') AND state IN ('pending', 'running')"
    )
    op.execute(
        """
        CREATE TABLE tenant_data_keys (
            tenant_id uuid CONSTRAINT pk_tenant_data_keys PRIMARY KEY
                CONSTRAINT fk_tenant_data_keys_tenant_id_tenants REFERENCES tenants (id) ON DELETE CASCADE,
            wrapped text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for table in ("backups", "exports"):
        kind = (
            "kind text NOT NULL CONSTRAINT ck_backups_kind CHECK (kind IN ('manual', 'scheduled', 'pre_restore')),"
            " note text,"
            if table == "backups"
            else ""
        )
        op.execute(
            f"""
            CREATE TABLE {table} (
                id uuid CONSTRAINT pk_{table} PRIMARY KEY,
                tenant_id uuid NOT NULL CONSTRAINT fk_{table}_tenant_id_tenants
                    REFERENCES tenants (id) ON DELETE CASCADE,
                state text NOT NULL CONSTRAINT ck_{table}_state CHECK (state IN ('running', 'completed', 'failed')),
                {kind}
                operation_id uuid,
                object_key text NOT NULL,
                size_bytes bigint,
                sha256 text,
                schema_version integer,
                server text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                completed_at timestamptz,
                expires_at timestamptz
            )
            """
        )
        op.execute(f"CREATE INDEX ix_{table}_tenant ON {table} (tenant_id, created_at DESC)")
    op.execute("CREATE INDEX ix_backups_expires ON backups (expires_at) WHERE expires_at IS NOT NULL")
    # The cutover hold: while hold_id is set, gateways queue the tenant's new requests (see tenant_service.cutover).
    op.execute("ALTER TABLE tenants ADD COLUMN hold_id text, ADD COLUMN hold_until timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE tenants DROP COLUMN IF EXISTS hold_id, DROP COLUMN IF EXISTS hold_until")
    for table in ("exports", "backups", "tenant_data_keys", "operations"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
