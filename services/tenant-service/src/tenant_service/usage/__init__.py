"""Usage history and quota alerts (contract §13): ingest of the gateways' counts, history, sampling, retention."""
