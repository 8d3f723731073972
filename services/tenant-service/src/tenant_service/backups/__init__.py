"""Backups, restores, clones and exports of tenant databases, and the encrypted object store that holds them."""
