"""Hyper-parameter search: parallel trials, each tracked in an MLflow run nested under the study's run.

The study task samples hyper-parameters for a small decision-tree regressor, starts every trial at
once with ``asyncio.gather``, and logs the best trial. Each trial is a ``nested`` task: it gets a run
of its own whose ``mlflow.parentRunId`` is the study's run. Its hyper-parameters are its inputs, and
``log_inputs=True`` records them as the run's params, so no task calls ``mlflow.log_params`` for
them. The score is logged with the ordinary ``mlflow.log_metric``, queued (``async_logging=True``)
so that it does not block the event loop the trials share. The plugin gives every task its own
active-run stack, so parallel trials never log into each other's runs, even though they share one
thread.

Run it with ``python examples/hpo.py [TRACKING_URI]``. Without a URI it tracks into the SQLite file
in ``.demo/`` that ``make demo`` uses.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flyte
import mlflow
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeRegressor

from flyteplugins.mlflow import MlflowRun, RunMode, get_mlflow_run, mlflow_config, mlflow_run

EXPERIMENT = "flyte-hpo"

env = flyte.TaskEnvironment(name="mlflow-hpo")

# One tracker for every trial: a run nested under the caller's, with the trial's inputs as its params
# (log_inputs=True: number, max_depth, min_samples_leaf). Its link shows the study's run.
# The trials share one event loop, so their logging is queued (async_logging=True): an mlflow.log_*
# call returns at once instead of holding up the other trials, and the plugin stores everything a
# trial queued before it ends the trial's run. A call the server refuses fails the trial at its end.
nested = MlflowRun(run_mode=RunMode.NESTED, async_logging=True, log_inputs=True)


@dataclass
class Trial:
    """One trial's hyper-parameters, score and MLflow run."""

    number: int
    max_depth: int
    min_samples_leaf: int
    rmse: float
    run_id: str


@dataclass
class Study:
    """The study's MLflow run, its best trial, and all trials in the order they were started."""

    run_id: str
    experiment_id: str
    best: Trial
    trials: list[Trial] = field(default_factory=list)


@functools.cache
def split() -> tuple[Any, Any, Any, Any]:
    """The diabetes data set, split once per process into training and validation parts."""
    features, target = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features, target, test_size=0.25, random_state=0)
    return x_train, x_val, y_train, y_val


@nested
@env.task(links=(nested.link(),))
async def trial(number: int, max_depth: int, min_samples_leaf: int) -> Trial:
    """Fit one model and log its validation RMSE into this trial's run (its inputs are already there)."""
    run = get_mlflow_run()
    assert run is not None

    x_train, x_val, y_train, y_val = split()
    model = DecisionTreeRegressor(max_depth=max_depth, min_samples_leaf=min_samples_leaf, random_state=0)
    model.fit(x_train, y_train)
    rmse = math.sqrt(float(mean_squared_error(y_val, model.predict(x_val))))

    mlflow.log_metric("rmse", rmse)
    return Trial(number, max_depth, min_samples_leaf, rmse, str(run.info.run_id))


@mlflow_run(experiment_name=EXPERIMENT, tags={"example": "hpo"}, log_inputs=True)
@env.task
async def search(n_trials: int, seed: int = 0) -> Study:
    """Run ``n_trials`` random trials in parallel and record the best one in the study's run."""
    run = get_mlflow_run()
    assert run is not None
    mlflow.log_param("model", "DecisionTreeRegressor")  # n_trials and seed are recorded as inputs

    rng = random.Random(seed)
    space = [(rng.randint(1, 12), rng.randint(1, 40)) for _ in range(n_trials)]
    trials = await asyncio.gather(*(trial(i, depth, leaf) for i, (depth, leaf) in enumerate(space)))

    best = min(trials, key=lambda t: t.rmse)
    mlflow.log_metric("best_rmse", best.rmse)
    mlflow.log_params({"best_trial": best.number, "best_max_depth": best.max_depth})
    mlflow.log_param("best_min_samples_leaf", best.min_samples_leaf)
    mlflow.set_tag("best_run_id", best.run_id)
    return Study(str(run.info.run_id), str(run.info.experiment_id), best, list(trials))


def default_tracking_uri() -> str:
    """The SQLite store in ``.demo/`` (or ``$FLYTE_MLFLOW_DEMO_DIR``), shared with the quickstart."""
    directory = Path(os.environ.get("FLYTE_MLFLOW_DEMO_DIR") or Path(__file__).resolve().parents[1] / ".demo")
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory.resolve() / 'mlflow.db'}"


def main(tracking_uri: str | None = None, n_trials: int = 16, seed: int = 0) -> Study:
    """Run the search locally, print the best trial, and return the study.

    Args:
        tracking_uri: where to track; defaults to ``$FLYTE_MLFLOW_DEMO_URI``, then to ``.demo/``.
        n_trials: how many trials to run in parallel.
        seed: seeds the random search space.
    """
    uri = tracking_uri or os.environ.get("FLYTE_MLFLOW_DEMO_URI") or default_tracking_uri()
    context = mlflow_config(tracking_uri=uri)
    run = flyte.with_runcontext(mode="local", custom_context=context).run(
        search, n_trials=n_trials, seed=seed
    )
    study = run.outputs()[0]
    assert isinstance(study, Study)

    print(f"Study run {study.run_id} in {uri} (experiment {EXPERIMENT!r}, id {study.experiment_id})")
    for t in sorted(study.trials, key=lambda t: t.rmse):
        marker = "  <- best" if t.run_id == study.best.run_id else ""
        print(
            f"  trial {t.number:>2}  max_depth={t.max_depth:<2}  min_samples_leaf={t.min_samples_leaf:<2}  "
            f"rmse={t.rmse:7.3f}  run {t.run_id}{marker}"
        )
    if uri.startswith("sqlite:"):
        print(f"Browse the runs with: mlflow ui --backend-store-uri {uri}")
    return study


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
