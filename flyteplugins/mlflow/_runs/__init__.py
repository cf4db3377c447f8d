"""A run's life beyond one request: its final status or the journal, retries, the sweep, SIGTERM."""
