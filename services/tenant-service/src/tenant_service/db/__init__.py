"""The registry database: models, engine and migrations."""
