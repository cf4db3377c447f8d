"""MLflow's global state made per task: patches put in by the first tracked call, taken out after the last."""
