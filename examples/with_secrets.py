"""Credentials from Flyte secrets: tracking to a server that asks every request for a login.

A shared MLflow server usually authenticates. MLflow's client reads the credentials from the
environment for every request it sends: ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``
for basic auth (MLflow's own ``--app-name basic-auth`` server), or ``MLFLOW_TRACKING_TOKEN`` for a
bearer token. The plugin's own requests read the same variables.

So the credentials go in Flyte secrets, and each secret is mounted under the variable MLflow
reads (``as_env_var``). The tracking settings in ``mlflow_config`` hold no credentials: Flyte
stores the run context with the run's metadata, where anyone who can see the run can read it.

Run it against a server of your own::

    export MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD=...
    python examples/with_secrets.py http://127.0.0.1:5000 [EXPERIMENT_ID]

In local mode Flyte does not fetch secrets: the variables you export stand in for them. On a
cluster, create the secrets once (``flyte create secret mlflow-username``, and the same for
``mlflow-password``) and the pod gets them as these variables.

(The file is not called ``secrets.py``: a script's own folder comes first on ``sys.path``, so a
``secrets.py`` here would hide the standard library's ``secrets`` module from every example.)
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import flyte
import mlflow

from flyteplugins.mlflow import get_mlflow_run, mlflow_config, mlflow_run

EXPERIMENT = "flyte-secrets"

env = flyte.TaskEnvironment(
    name="mlflow-secrets",
    secrets=[
        flyte.Secret(key="mlflow-username", as_env_var="MLFLOW_TRACKING_USERNAME"),
        flyte.Secret(key="mlflow-password", as_env_var="MLFLOW_TRACKING_PASSWORD"),
    ],
)


@dataclass
class Trained:
    """What one training run produced, and where MLflow holds it."""

    run_id: str
    experiment_id: str
    trial_run_ids: list[str]
    best_threshold: float


def _run_id() -> str:
    run = get_mlflow_run()
    if run is None:
        raise RuntimeError("this task has no MLflow run")
    run_id: str = run.info.run_id
    return run_id


@mlflow_run(run_mode="nested")
@env.task
async def evaluate(threshold: float) -> tuple[str, float]:
    """One threshold, in a run of its own under the training run."""
    mlflow.log_param("threshold", threshold)
    score = 1.0 - abs(threshold - 0.6)
    mlflow.log_metric("f1", score)
    return _run_id(), score


@mlflow_run
@env.task
async def train(epochs: int) -> Trained:
    """Log a loss curve, then evaluate three thresholds in parallel."""
    for epoch in range(epochs):
        mlflow.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    scored = await asyncio.gather(*(evaluate(threshold=t) for t in (0.4, 0.6, 0.8)))
    best = max(range(len(scored)), key=lambda i: scored[i][1])
    mlflow.log_metric("best_f1", scored[best][1])
    run = get_mlflow_run()
    assert run is not None
    return Trained(_run_id(), run.info.experiment_id, [r for r, _ in scored], (0.4, 0.6, 0.8)[best])


def main(tracking_uri: str, experiment_id: str | None = None, epochs: int = 5) -> Trained:
    """Run the training locally against ``tracking_uri``, with credentials from the environment.

    Args:
        tracking_uri: the server, without credentials in it (the plugin refuses those).
        experiment_id: an experiment the user may edit; without one, the experiment
            ``flyte-secrets`` is found or created.
        epochs: how many loss values to log.
    """
    if experiment_id:
        context = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id)
    else:
        context = mlflow_config(tracking_uri=tracking_uri, experiment_name=EXPERIMENT)
    trained = (
        flyte.with_runcontext(mode="local", custom_context=context).run(train, epochs=epochs).outputs()[0]
    )
    assert isinstance(trained, Trained)
    print(f"Tracked run {trained.run_id} in experiment {trained.experiment_id} at {tracking_uri}")
    print(f"  {len(trained.trial_run_ids)} nested trials; best threshold {trained.best_threshold}")
    return trained


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python examples/with_secrets.py TRACKING_URI [EXPERIMENT_ID]")
    flyte.init()
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
