"""The plan: what one tracked call will do, decided from plain values, without a request."""
