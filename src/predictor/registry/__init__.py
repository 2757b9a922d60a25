"""MLflow: runs tracked, models registered, the promotion gate (``tracking``), and the pyfunc wrapper."""
