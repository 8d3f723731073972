"""Webhooks (contract §13): subscriptions, signed deliveries of the outbox's events, and their dispatcher."""
