"""Tenantry gateway: resolve → authenticate → limit → forward, for every tenant request."""
