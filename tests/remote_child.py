"""Child tasks that ``test_remote.py`` runs in processes of their own, the way a remote Flyte run does.

On a cluster, each task runs in its own container: Flyte's ``a0`` entry point loads the task with
its resolver (``getattr(module, name)``), reads the inputs file its parent wrote (the values and the
parent's ``custom_context``), and runs it through ``load_and_run_task``. :func:`main` does the same
in a subprocess, minus the cluster: no controller (these children start no tasks of their own) and
local paths for inputs and outputs.

Usage: ``python -c "import remote_child, sys; sys.exit(remote_child.main(sys.argv[1:]))" TASK INPUTS
OUTPUT_DIR RUN_NAME ACTION_NAME`` with this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import sys

import flyte
import mlflow

from flyteplugins.mlflow import get_mlflow_run, mlflow_run

RESOLVER = "flyte._internal.resolvers.default.DefaultTaskResolver"

env = flyte.TaskEnvironment(name="remote-child")


def _run_id() -> str:
    run = get_mlflow_run()
    assert run is not None, "the child is not tracked"
    return str(run.info.run_id)


@mlflow_run
@env.task
async def auto_child(value: float) -> str:
    mlflow.log_metric("remote_auto", value)
    return _run_id()


@mlflow_run
@env.task
async def quiet_auto_child(value: float) -> str:
    return _run_id()


@mlflow_run(run_mode="nested")
@env.task
async def nested_child(value: float) -> str:
    mlflow.log_metric("remote_nested", value)
    return _run_id()


@mlflow_run(run_mode="new")
@env.task
async def new_child(value: float) -> str:
    mlflow.log_metric("remote_new", value)
    return _run_id()


def main(argv: list[str]) -> int:
    """Run one task of this module as a remote action would: load it by name, feed it its inputs file."""
    from flyte._internal.runtime.entrypoints import load_and_run_task
    from flyte.models import ActionID, RawDataPath

    task_name, inputs_path, output_dir, run_name, action_name = argv
    flyte.init(project="tests", domain="development")
    asyncio.run(
        load_and_run_task(
            action=ActionID(name=action_name, run_name=run_name, project="tests", domain="development"),
            raw_data_path=RawDataPath(path=output_dir),
            output_path=output_dir,
            run_base_dir=output_dir,
            version="remote-test",
            controller=None,
            resolver=RESOLVER,
            resolver_args=["mod", __name__, "instance", task_name],
            input_path=inputs_path,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
