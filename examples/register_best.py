"""Register the best trial's model: parallel trials each log a model, the study registers the winner.

The study task starts every trial at once with ``asyncio.gather``. Each trial is a ``nested`` task
with a run of its own: it fits a small decision-tree regressor in ``asyncio.to_thread`` (so the
trials' fits really overlap), logs the fitted model with ``mlflow.sklearn.log_model``, and reads its
own model's id back with ``mlflow.last_logged_model()``. The plugin keeps that "last logged model"
per tracked task, so each trial gets its own model even though all of them log at the same time.

When the trials are done, the study registers the best trial's model under ``MODEL_NAME`` and
points the alias ``champion`` at the new version. A downstream tracked task then loads
``models:/<name>@champion``, which downloads the model's files from the tracking server, and scores it
on the validation split.

Run it against a tracking server that serves artifacts, so that every task can upload and download
model files through the server alone::

    mlflow server --serve-artifacts --artifacts-destination ./mlartifacts --port 5000
    python examples/register_best.py http://127.0.0.1:5000 [MODEL_NAME]

Without a URI (and without ``$FLYTE_MLFLOW_DEMO_URI``) it tracks into the SQLite file in ``.demo/``
that ``make demo`` uses, with the model files next to it.
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
import mlflow.sklearn
import sklearn
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeRegressor

from flyteplugins.mlflow import MlflowRun, RunMode, get_mlflow_run, mlflow_config, mlflow_run

EXPERIMENT = "flyte-register-best"
MODEL_NAME = "flyte-register-best"
ALIAS = "champion"

# Given explicitly, so that logging a model does not run MLflow's slow requirement inference.
PIP_REQUIREMENTS = [f"scikit-learn=={sklearn.__version__}"]
# MLflow stores scikit-learn models with skops, which loads only the types it is told to trust. A
# decision tree needs its node storage; these are our own models, so we trust it. The list is stored
# with the model, so load_model downstream needs no arguments.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]

env = flyte.TaskEnvironment(name="mlflow-register-best")

nested = MlflowRun(run_mode=RunMode.NESTED)


@dataclass
class Registered:
    """The study's run, the registered model version its best trial became, and every trial."""

    run_id: str
    experiment_id: str
    name: str
    version: str
    model_id: str
    rmse: float
    trials: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Scored:
    """What the downstream task loaded, from which run, and how well it predicted."""

    run_id: str
    model_uri: str
    model_id: str
    version: str
    rmse: float
    n_predictions: int


@functools.cache
def split() -> tuple[Any, Any, Any, Any]:
    """The diabetes data set, split once per process into training and validation parts."""
    features, target = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features, target, test_size=0.25, random_state=0)
    return x_train, x_val, y_train, y_val


def rmse_of(model: Any, x: Any, y: Any) -> float:
    """The root mean squared error of ``model``'s predictions for ``x``."""
    return math.sqrt(float(mean_squared_error(y, model.predict(x))))


def fit_and_log(max_depth: int, min_samples_leaf: int) -> float:
    """Fit one tree, log it as a model of the active run, and return its validation RMSE."""
    x_train, x_val, y_train, y_val = split()
    model = DecisionTreeRegressor(max_depth=max_depth, min_samples_leaf=min_samples_leaf, random_state=0)
    model.fit(x_train, y_train)
    rmse = rmse_of(model, x_val, y_val)
    mlflow.log_metric("rmse", rmse)
    mlflow.sklearn.log_model(
        model,
        name="model",
        pip_requirements=PIP_REQUIREMENTS,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        input_example=x_val[:2],
    )
    return rmse


@nested
@env.task(links=(nested.link(),))
async def trial(number: int, max_depth: int, min_samples_leaf: int) -> tuple[float, str]:
    """Fit, score and log one model in this trial's run; return its RMSE and its model id."""
    mlflow.log_params({"trial": number, "max_depth": max_depth, "min_samples_leaf": min_samples_leaf})
    # The fit and the upload run on a worker thread; they still log into this trial's run.
    rmse = await asyncio.to_thread(fit_and_log, max_depth, min_samples_leaf)
    logged = mlflow.last_logged_model()  # this trial's model, not the one another trial logged last
    assert logged is not None
    return rmse, logged.model_id


@mlflow_run(experiment_name=EXPERIMENT, tags={"example": "register_best"})
@env.task
async def study(n_trials: int, model_name: str, seed: int = 0) -> Registered:
    """Run ``n_trials`` trials in parallel, register the best model and alias it ``champion``."""
    run = get_mlflow_run()
    assert run is not None
    mlflow.log_params({"n_trials": n_trials, "seed": seed, "model_name": model_name})

    rng = random.Random(seed)
    space = [(rng.randint(1, 12), rng.randint(1, 40)) for _ in range(n_trials)]
    trials = await asyncio.gather(*(trial(i, depth, leaf) for i, (depth, leaf) in enumerate(space)))

    best_rmse, best_model_id = min(trials)
    version = mlflow.register_model(f"models:/{best_model_id}", model_name)
    MlflowClient().set_registered_model_alias(model_name, ALIAS, version.version)
    mlflow.log_metric("best_rmse", best_rmse)
    mlflow.set_tags({"best_model_id": best_model_id, "registered_version": str(version.version)})
    return Registered(
        run_id=str(run.info.run_id),
        experiment_id=str(run.info.experiment_id),
        name=model_name,
        version=str(version.version),
        model_id=best_model_id,
        rmse=best_rmse,
        trials=list(trials),
    )


def logged_model_id(version: ModelVersion) -> str:
    """The id of the logged model that a registered version was made from.

    A version registered from ``models:/<model_id>`` has that URI as its ``source``; its ``model_id``
    field can be empty when it is read back from a tracking server, so the source is the sure way.
    """
    return str(version.model_id or (version.source or "").removeprefix("models:/"))


@mlflow_run(experiment_name=EXPERIMENT, tags={"example": "register_best", "role": "downstream"})
@env.task
async def score_champion(model_name: str) -> Scored:
    """Load the model that the alias ``champion`` points at and score it on the validation split."""
    run = get_mlflow_run()
    assert run is not None
    uri = f"models:/{model_name}@{ALIAS}"
    champion = MlflowClient().get_model_version_by_alias(model_name, ALIAS)
    model = mlflow.sklearn.load_model(uri)

    _, x_val, _, y_val = split()
    rmse = rmse_of(model, x_val, y_val)
    mlflow.log_param("model_uri", uri)
    mlflow.log_metric("champion_rmse", rmse)
    return Scored(
        run_id=str(run.info.run_id),
        model_uri=uri,
        model_id=logged_model_id(champion),
        version=str(champion.version),
        rmse=rmse,
        n_predictions=len(y_val),
    )


@env.task
async def register_best(n_trials: int, model_name: str, seed: int = 0) -> tuple[Registered, Scored]:
    """The study, then the downstream task that uses what the study registered."""
    registered = await study(n_trials, model_name, seed)
    scored = await score_champion(model_name)
    return registered, scored


def demo_tracking_uri() -> str:
    """The SQLite store in ``.demo/`` (or ``$FLYTE_MLFLOW_DEMO_DIR``), with model files next to it."""
    directory = Path(os.environ.get("FLYTE_MLFLOW_DEMO_DIR") or Path(__file__).resolve().parents[1] / ".demo")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(directory / "artifacts").as_uri())
    return uri


def main(
    tracking_uri: str | None = None, model_name: str = MODEL_NAME, n_trials: int = 8, seed: int = 0
) -> tuple[Registered, Scored]:
    """Run the study and the downstream task locally, print what happened, and return both results.

    Args:
        tracking_uri: where to track; defaults to ``$FLYTE_MLFLOW_DEMO_URI``, then to ``.demo/``.
        model_name: the registered model's name.
        n_trials: how many trials to run in parallel.
        seed: seeds the random search space.
    """
    uri = tracking_uri or os.environ.get("FLYTE_MLFLOW_DEMO_URI") or demo_tracking_uri()
    context = mlflow_config(tracking_uri=uri)
    run = flyte.with_runcontext(mode="local", custom_context=context).run(
        register_best, n_trials=n_trials, model_name=model_name, seed=seed
    )
    registered, scored = run.outputs()  # a task that returns a tuple has one output per item
    assert isinstance(registered, Registered) and isinstance(scored, Scored)

    print(f"Study run {registered.run_id} in {uri} (experiment {EXPERIMENT!r})")
    for rmse, model_id in sorted(registered.trials):
        marker = "  <- best" if model_id == registered.model_id else ""
        print(f"  rmse={rmse:7.3f}  model {model_id}{marker}")
    print(
        f"Registered {registered.name!r} version {registered.version} from {registered.model_id} as {ALIAS!r}"
    )
    print(
        f"Downstream run {scored.run_id} loaded {scored.model_uri} (version {scored.version}, "
        f"model {scored.model_id}): rmse={scored.rmse:.3f} on {scored.n_predictions} rows"
    )
    if uri.startswith("sqlite:"):
        print(f"Browse the runs and the model with: mlflow ui --backend-store-uri {uri}")
    return registered, scored


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2] if len(sys.argv) > 2 else MODEL_NAME)
