"""Quickstart: one local Flyte run whose tasks share, nest and start MLflow runs.

``make demo`` runs this file. With no tracking URI it tracks into an SQLite file in ``.demo/`` at the
root of the repository, so no server is needed, and it ends by printing the ``mlflow ui`` command
that shows the runs. To track elsewhere, pass a URI::

    python examples/quickstart.py http://127.0.0.1:5000
    FLYTE_MLFLOW_DEMO_URI=http://127.0.0.1:5000 python examples/quickstart.py

``FLYTE_MLFLOW_DEMO_DIR`` moves the default SQLite store to another directory.

The workflow:

* ``pipeline`` (the parent) starts the run of the study. It is tracked by an ``MlflowRun`` tracker,
  the class API;
* ``load_data`` has the default run mode ``auto``, so it logs into the parent's run;
* ``train_fold`` is ``nested``: each fold gets a run of its own under the parent, and the folds run
  in parallel with ``asyncio.gather``;
* ``baseline`` is decorated with a bare ``@mlflow_run``, and the parent calls it inside
  ``with mlflow_config(run_mode="new")``, so it gets an independent, top-level run.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import flyte
import mlflow

from flyteplugins.mlflow import (
    Mlflow,
    MlflowRun,
    get_mlflow_context,
    get_mlflow_run,
    mlflow_config,
    mlflow_run,
)

EXPERIMENT = "flyte-quickstart"
URI_ENV = "FLYTE_MLFLOW_DEMO_URI"
DIR_ENV = "FLYTE_MLFLOW_DEMO_DIR"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise

env = flyte.TaskEnvironment(name="mlflow-quickstart")

# The class API: a frozen tracker holding this workflow's settings. Here it names the experiment
# and adds a tag; the tracking URI and link host come from the run context (see `main`).
study = MlflowRun(experiment_name=EXPERIMENT, tags={"example": "quickstart"})


@dataclass
class QuickstartRuns:
    """The MLflow runs that one pipeline run used."""

    experiment_id: str
    parent: str
    shared: str
    new: str
    nested: list[str] = field(default_factory=list)


def active_run_id() -> str:
    """The id of the MLflow run of the task being executed."""
    run = get_mlflow_run()
    if run is None:
        msg = "this task is not being tracked"
        raise RuntimeError(msg)
    return str(run.info.run_id)


@mlflow_run  # run mode "auto": share the caller's run
@env.task(links=(Mlflow(),))
async def load_data(n_rows: int) -> str:
    """Pretend to load a data set; logs into the parent's run."""
    config = get_mlflow_context()  # the settings this task inherited, e.g. the link host
    mlflow.log_param("n_rows", n_rows)
    mlflow.log_param("link_host", config.link_host if config else "")
    mlflow.log_metric("rows_loaded", float(n_rows))
    return active_run_id()


@mlflow_run(run_mode="nested")
@env.task(links=(Mlflow(),))  # shown as "MLflow (parent)": it points at the parent's run
async def train_fold(fold: int, learning_rate: float) -> str:
    """Pretend to train on one fold, in a run nested under the parent's."""
    mlflow.log_params({"fold": fold, "learning_rate": learning_rate})
    loss = 1.0
    for step in range(5):
        loss *= 1.0 - learning_rate
        mlflow.log_metric("loss", loss, step=step)
        await asyncio.sleep(0)  # let the sibling folds interleave
    return active_run_id()


@mlflow_run  # no run mode of its own: the caller decides with `with mlflow_config(...)`
@env.task
async def baseline() -> str:
    """Score a trivial model, in a run of its own."""
    mlflow.log_param("model", "predict-the-mean")
    mlflow.log_metric("loss", 1.0)
    return active_run_id()


@study
@env.task
async def pipeline(n_folds: int) -> QuickstartRuns:
    """The parent: owns the study's run and calls the other tasks."""
    run = get_mlflow_run()
    assert run is not None
    mlflow.log_param("n_folds", n_folds)

    shared = await load_data(n_rows=1_000)
    nested = await asyncio.gather(*(train_fold(fold=i, learning_rate=(i + 1) / 10) for i in range(n_folds)))
    with mlflow_config(run_mode="new", tags={"role": "baseline"}):
        new = await baseline()

    mlflow.log_metric("folds", float(len(nested)))
    return QuickstartRuns(
        experiment_id=str(run.info.experiment_id),
        parent=str(run.info.run_id),
        shared=shared,
        new=new,
        nested=list(nested),
    )


# --- running it --------------------------------------------------------------------------------


def demo_store() -> Path:
    """The SQLite file that the demo tracks into when no tracking URI is given."""
    directory = Path(os.environ.get(DIR_ENV) or Path(__file__).resolve().parents[1] / ".demo")
    directory.mkdir(parents=True, exist_ok=True)
    return directory.resolve() / "mlflow.db"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the MLflow UI for a local store (``None`` for a server)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    program = "mlflow"
    if mlflow_bin.exists():
        try:
            program = str(mlflow_bin.relative_to(Path.cwd()))
        except ValueError:
            program = str(mlflow_bin)
    return shlex.join([program, "ui", "--backend-store-uri", tracking_uri])


def run_url(host: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (the same URL the ``Mlflow`` link builds)."""
    return f"{host.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def main(tracking_uri: str | None = None, n_folds: int = 3) -> QuickstartRuns:
    """Run the pipeline locally, print its runs, and return them.

    Args:
        tracking_uri: where to track; defaults to ``$FLYTE_MLFLOW_DEMO_URI``, then to the SQLite
            file in ``.demo/``.
        n_folds: how many nested fold runs to start in parallel.
    """
    uri = tracking_uri or os.environ.get(URI_ENV) or f"sqlite:///{demo_store()}"
    ui = ui_command(uri)
    link_host = UI_ADDRESS if ui else uri
    # The function API: settings for every tracked task of this run, passed through the context.
    # (Flyte annotates custom_context as dict[str, str]; dict() keeps mypy happy.)
    config = mlflow_config(tracking_uri=uri, link_host=link_host)
    run = flyte.with_runcontext(mode="local", custom_context=config).run(pipeline, n_folds=n_folds)
    runs = run.outputs()[0]
    assert isinstance(runs, QuickstartRuns)

    rows = [
        ("parent", "pipeline", runs.parent),
        ("shared", "load_data (auto)", runs.shared),
        ("new", "baseline (new)", runs.new),
        *(("nested", f"train_fold {i} (nested)", rid) for i, rid in enumerate(runs.nested)),
    ]
    print(f"Tracked into {uri}, experiment {EXPERIMENT!r} (id {runs.experiment_id}):")
    for role, task, rid in rows:
        print(f"  {role:<7} {task:<26} {rid}  {run_url(link_host, runs.experiment_id, rid)}")
    print("The shared run is the parent's run; the nested runs have the parent as mlflow.parentRunId.")
    if ui:
        print(f"\nTo browse them, run this from {Path.cwd()} and open {UI_ADDRESS}:")
        print(f"  {ui}")
        print("or run `make ui`, which prints the address of this experiment's runs.")
    return runs


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
