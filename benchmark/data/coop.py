"""CoOp-format loaders of the real datasets (placeholder until the real-datasets issue lands)."""
