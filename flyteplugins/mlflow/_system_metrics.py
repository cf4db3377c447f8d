"""MLflow's system-metrics monitor for a run that a tracked call owns (``log_system_metrics=True``)."""

from __future__ import annotations

from typing import Any

__all__ = ["start"]


def start(run_id: str) -> Any:
    """Start MLflow's ``SystemMetricsMonitor`` for ``run_id``; ``finish()`` stops it."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id)
    monitor.start()
    return monitor
