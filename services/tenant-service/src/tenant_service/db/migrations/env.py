"""Alembic environment: always given a live connection by tenant_service.db.migrate."""

from alembic import context

from tenant_service.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run registry migrations with `tenantctl migrate`, which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
