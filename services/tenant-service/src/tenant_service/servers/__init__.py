"""Several PostgreSQL servers: the registry of servers, placement, moves and drains (contract §11)."""
