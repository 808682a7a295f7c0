"""Model versions: which version is active, activation and pinning, where weights live."""
