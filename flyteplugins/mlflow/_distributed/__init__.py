"""Distributed training: rank 0's run on every rank, runs per rank, and system metrics per node."""
