"""Benchmarks of the plugin's tracking overhead; each module prints its figures (see ``run_all``)."""
