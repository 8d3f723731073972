"""Initial registry: installation, plans, tenants, domains, API keys, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE tenant_revision_seq")
    op.execute(
        """
        CREATE TABLE installation (
            id integer PRIMARY KEY CHECK (id = 1),
            installation_id uuid NOT NULL,
            template_version integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("INSERT INTO installation (id, installation_id) VALUES (1, gen_random_uuid())")
    op.execute(
        """
        CREATE TABLE plans (
            name text PRIMARY KEY,
            limits jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        INSERT INTO plans (name, limits) VALUES
          ('free', '{"requests_per_minute": 600, "requests_per_day": 50000, "max_connections": 5}'),
          ('pro', '{"requests_per_minute": 6000, "requests_per_day": 1000000, "max_connections": 20}'),
          ('enterprise', '{"requests_per_minute": 60000, "requests_per_day": 50000000, "max_connections": 50}')
        """
    )
    op.execute(
        """
        CREATE TABLE tenants (
            id uuid PRIMARY KEY,
            slug text NOT NULL CONSTRAINT uq_tenants_slug UNIQUE,
            name text NOT NULL,
            status text NOT NULL CONSTRAINT ck_tenants_status CHECK
                (status IN ('provisioning','active','suspended','failed','deleting','deleted')),
            plan text NOT NULL CONSTRAINT fk_tenants_plan_plans REFERENCES plans (name),
            settings jsonb NOT NULL DEFAULT '{}'::jsonb,
            limits jsonb NOT NULL DEFAULT '{}'::jsonb,
            upstream_url text,
            db_name text NOT NULL CONSTRAINT uq_tenants_db_name UNIQUE,
            db_role text NOT NULL CONSTRAINT uq_tenants_db_role UNIQUE,
            db_host text NOT NULL,
            db_port integer NOT NULL,
            db_password_enc text NOT NULL,
            template_version integer,
            schema_version integer,
            failure_reason text,
            provisioning_attempts integer NOT NULL DEFAULT 0,
            revision bigint NOT NULL DEFAULT nextval('tenant_revision_seq'),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            purge_after timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_tenants_created ON tenants (created_at, id)")
    op.execute("CREATE INDEX ix_tenants_status ON tenants (status)")
    op.execute("CREATE INDEX ix_tenants_revision ON tenants (revision)")
    op.execute(
        """
        CREATE TABLE tenant_domains (
            domain text PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_tenant_domains_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_tenant_domains_tenant_id ON tenant_domains (tenant_id)")
    op.execute(
        """
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_api_keys_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            name text NOT NULL,
            prefix text NOT NULL,
            key_hash bytea NOT NULL CONSTRAINT uq_api_keys_key_hash UNIQUE,
            scopes jsonb NOT NULL DEFAULT '[]'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            revoked_at timestamptz,
            rotated_to uuid
        )
        """
    )
    op.execute("CREATE INDEX ix_api_keys_tenant_id ON api_keys (tenant_id)")
    op.execute(
        """
        CREATE TABLE audit_log (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            actor text NOT NULL,
            action text NOT NULL,
            tenant_id uuid,
            target text NOT NULL,
            before jsonb,
            after jsonb,
            request_id text
        )
        """
    )
    op.execute("CREATE INDEX ix_audit_tenant ON audit_log (tenant_id, id)")


def downgrade() -> None:
    for table in ("audit_log", "api_keys", "tenant_domains", "tenants", "plans", "installation"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP SEQUENCE IF EXISTS tenant_revision_seq")
