"""The "MLflow" tab in a Flyte task's report: the run read back once when it ends."""
