"""Provisioning: the template database, per-tenant databases and roles, and the reconciler."""
