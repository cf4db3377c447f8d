"""MLflow experiment tracking for Flyte 2 tasks.

Two equivalent ways in: the documented functions (``mlflow_run``, ``mlflow_config``) and the typed
classes they build (``MlflowRun``, ``MlflowConfig``).
"""

from flyteplugins.mlflow._api import (
    get_mlflow_context,
    get_mlflow_run,
    get_mlflow_run_id,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError, TrackingServerUnreachable
from flyteplugins.mlflow._links.link import Mlflow
from flyteplugins.mlflow._links.own_link import LinkTarget
from flyteplugins.mlflow._settings.config import MlflowConfig
from flyteplugins.mlflow._settings.enums import OnRetry, OnTrackingError, RankScope, ReportGoal, RunMode
from flyteplugins.mlflow._tracing import observer as _observer
from flyteplugins.mlflow._tracker import MlflowRun

_observer.register()  # the one thing done at import: a task's span opens before its body (tracing)

__all__ = [
    "LinkTarget",
    "Mlflow",
    "MlflowConfig",
    "MlflowRun",
    "MlflowTrackingError",
    "OnRetry",
    "OnTrackingError",
    "RankScope",
    "ReportGoal",
    "RunMode",
    "TrackingRequestError",
    "TrackingServerUnreachable",
    "get_mlflow_context",
    "get_mlflow_run",
    "get_mlflow_run_id",
    "mlflow_config",
    "mlflow_run",
]
