"""Tenant users (contract §12)."""
