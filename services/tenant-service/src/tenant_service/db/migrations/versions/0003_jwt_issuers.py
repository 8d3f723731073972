"""External JWT issuers a tenant trusts (its own identity provider signing tokens the gateways accept).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The UNIQUE (issuer, audience) constraint is the isolation property: a gateway maps a token to a tenant by its
    # (iss, aud) pair alone, so the pair may be trusted by one tenant only. Were it trusted by two, a token minted
    # for tenant A's users would be accepted as tenant B's.
    op.execute(
        """
        CREATE TABLE tenant_jwt_issuers (
            id uuid CONSTRAINT pk_tenant_jwt_issuers PRIMARY KEY,
            tenant_id uuid NOT NULL CONSTRAINT fk_tenant_jwt_issuers_tenant_id_tenants
                REFERENCES tenants (id) ON DELETE CASCADE,
            issuer text NOT NULL,
            audience text NOT NULL,
            jwks_url text NOT NULL,
            algorithms text[] NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_tenant_jwt_issuers_issuer_audience UNIQUE (issuer, audience)
        )
        """
    )
    op.execute("CREATE INDEX ix_tenant_jwt_issuers_tenant_id ON tenant_jwt_issuers (tenant_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS tenant_jwt_issuers")
