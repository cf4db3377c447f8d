"""Buffering what cannot be sent yet: the per-run queue, and the journal that outlives a task."""
