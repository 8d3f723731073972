"""Tenantry tenant-service: the tenant registry, database-per-tenant provisioning and the admin API."""
