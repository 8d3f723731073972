"""The five benchmark sections; each has ``run(ctx) -> dict`` and writes one section of the results."""
