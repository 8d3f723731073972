"""Shared helpers for the Tenantry test suite (importable as ``support``)."""
