"""Tenants: the registry's main resource."""
