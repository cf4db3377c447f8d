"""scikit-learn autologging: the task fits a model and MLflow records it, with no ``mlflow.log_*`` calls.

``autolog=True, framework="sklearn"`` switches on ``mlflow.sklearn.autolog`` for the time the task
runs. Fitting the model then logs the estimator's parameters and its training metrics, and scoring
it on held-out data logs that score too. When the task ends, the plugin switches autologging off
again, so untracked code that runs later in the process logs nothing.

The task is a plain sync function: Flyte runs it in a worker thread, and the plugin makes its run the
active run there.

Run it with ``python examples/sklearn_autolog.py [TRACKING_URI]``. Without a URI it tracks into the
SQLite file in ``.demo/`` that ``make demo`` uses.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import flyte
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import train_test_split

from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run

EXPERIMENT = "flyte-sklearn-autolog"

env = flyte.TaskEnvironment(name="mlflow-sklearn-autolog")


@dataclass
class Fitted:
    """The MLflow run that recorded the fit, and the model's R² on the test split."""

    run_id: str
    experiment_id: str
    test_r2: float


@mlflow_run(
    experiment_name=EXPERIMENT,
    autolog=True,
    framework="sklearn",
    log_models=False,  # True also stores the fitted model as an artifact of the run
    autolog_kwargs={"silent": True},  # keep MLflow's autolog messages out of the task's output
)
@env.task
def train(n_estimators: int, max_depth: int) -> Fitted:
    """Fit a random forest on the diabetes data set and score it on a held-out split."""
    run = get_mlflow_run()
    assert run is not None
    features, target = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features, target, test_size=0.25, random_state=0)

    model = RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth, random_state=0)
    model.fit(x_train, y_train)  # autolog: parameters, training_* metrics, estimator tags
    test_r2 = float(model.score(x_test, y_test))  # autolog: a post-training metric for this score

    return Fitted(str(run.info.run_id), str(run.info.experiment_id), test_r2)


def demo_tracking_uri() -> str:
    """The SQLite store in ``.demo/`` (or ``$FLYTE_MLFLOW_DEMO_DIR``), shared with the quickstart.

    Autologging stores a few artifacts (an HTML view of the estimator, metric details). A local store
    would put them in ``./mlruns`` by default, so the experiment is created here with its artifacts
    next to the database.
    """
    directory = Path(os.environ.get("FLYTE_MLFLOW_DEMO_DIR") or Path(__file__).resolve().parents[1] / ".demo")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(directory / "artifacts").as_uri())
    return uri


def main(tracking_uri: str | None = None, n_estimators: int = 20, max_depth: int = 4) -> Fitted:
    """Run the training task locally, print its run, and return the result.

    Args:
        tracking_uri: where to track; defaults to ``$FLYTE_MLFLOW_DEMO_URI``, then to ``.demo/``.
        n_estimators: trees in the forest.
        max_depth: the depth limit of each tree.
    """
    uri = tracking_uri or os.environ.get("FLYTE_MLFLOW_DEMO_URI") or demo_tracking_uri()
    context = mlflow_config(tracking_uri=uri)
    run = flyte.with_runcontext(mode="local", custom_context=context).run(
        train, n_estimators=n_estimators, max_depth=max_depth
    )
    fitted = run.outputs()[0]
    assert isinstance(fitted, Fitted)
    print(f"Autologged run {fitted.run_id} in {uri} (experiment {EXPERIMENT!r}, id {fitted.experiment_id})")
    print(f"  test R² = {fitted.test_r2:.3f}")
    if uri.startswith("sqlite:"):
        print(f"Browse the run with: mlflow ui --backend-store-uri {uri}")
    return fitted


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
