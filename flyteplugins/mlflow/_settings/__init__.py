"""Settings: what users configure, the checks at construction, and the exact ``custom_context`` codec."""
