"""MLflow 3.4's fluent ``log_metric(s)`` fetches the run (``runs/get``, with MLflow's own minutes of
retries) on every call, outside the plugin's queue: a queued metric would fail during an outage.

While logging is queued, a tracked call's metrics read its active run instead, as MLflow 3.5 and later
do; that run's model outputs are kept current, so a metric still links to the model logged at its
step, as 3.4's fetch did.
"""

from __future__ import annotations

import inspect
from typing import Any

from flyteplugins.mlflow._patches.current import current
from flyteplugins.mlflow._patches.patch import Undo
from mlflow.entities import RunOutputs
from mlflow.tracking import MlflowClient, fluent

__all__ = ["applies", "install"]

_MODEL_IDS = "_get_model_ids_for_new_metric_if_exist"
_INPUTS = "_log_inputs_for_metrics_if_necessary"


def _own_run(run_id: str) -> Any:
    """The tracked call's active run if it is ``run_id``, else ``None``."""
    call = current()
    runs = call.runs if call is not None else None
    return runs[-1] if runs and runs[-1].info.run_id == run_id else None


def applies() -> bool:
    """Whether MLflow's helpers still take a run id to fetch (MLflow before 3.5)."""
    helpers = [getattr(fluent, name, None) for name in (_MODEL_IDS, _INPUTS)]
    return all(callable(f) and next(iter(inspect.signature(f).parameters), None) == "run_id" for f in helpers)


def install(undo: Undo) -> None:
    """Put the stand-ins in where :func:`applies`."""
    if not applies():
        return
    model_ids, inputs = getattr(fluent, _MODEL_IDS), getattr(fluent, _INPUTS)
    log_outputs = MlflowClient.log_outputs

    def model_ids_at(run_id: str, step: int) -> list[str]:
        run = _own_run(run_id)
        if run is None:
            result: list[str] = model_ids(run_id, step)
            return result
        return [o.model_id for o in (run.outputs.model_outputs if run.outputs else []) if o.step == step]

    def inputs_for(run_id: str, metrics: list[Any], datasets: list[Any] | None = None) -> None:
        # Without a model or a dataset there is nothing to log: MLflow's helper only fetches the run.
        if datasets or any(m.model_id is not None for m in metrics) or _own_run(run_id) is None:
            inputs(run_id, metrics, datasets)

    def outputs_kept(self: MlflowClient, run_id: str, models: list[Any]) -> None:
        log_outputs(self, run_id, models)
        run = _own_run(run_id)
        if run is not None:
            if run.outputs is None:
                run._outputs = RunOutputs(model_outputs=list(models))
            else:
                run.outputs.model_outputs.extend(models)

    undo.replace(fluent, _MODEL_IDS, model_ids_at)
    undo.replace(fluent, _INPUTS, inputs_for)
    undo.replace(MlflowClient, "log_outputs", outputs_kept)
