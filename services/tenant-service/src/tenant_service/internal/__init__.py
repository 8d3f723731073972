"""The internal API for tenant apps: credential vending with service tokens."""
