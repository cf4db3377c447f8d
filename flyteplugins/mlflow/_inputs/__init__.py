"""A tracked call's inputs recorded as its run's params and datasets (``log_inputs=True``)."""
