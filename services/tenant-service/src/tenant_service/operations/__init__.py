"""Operations: the platform's one mechanism for long work (backups, restores, clones, exports, moves, drains)."""
