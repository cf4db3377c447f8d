"""Talking to the tracking server: bounded requests, one backoff and outage policy, clear refusals."""
