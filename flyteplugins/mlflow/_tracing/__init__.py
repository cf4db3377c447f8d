"""A Flyte run as one MLflow trace: tasks and ``flyte.trace`` steps as spans (``tracing=True``)."""
