"""Tenant API keys: created with their secret shown once, stored as keyed hashes."""
