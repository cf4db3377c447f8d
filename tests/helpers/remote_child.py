"""Child tasks that ``test_remote.py`` runs in processes of their own, the way a remote Flyte run does.

On a cluster, each task runs in its own container, started by Flyte's ``a0`` entry point;
:func:`main` runs one the same way in a subprocess (see ``pod_runner``).

Usage, with the repository on ``PYTHONPATH``: ``python -c "import sys; from tests.helpers import
remote_child; sys.exit(remote_child.main(sys.argv[1:]))" TASK INPUTS OUTPUT_DIR RUN_NAME ACTION_NAME``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import flyte
import mlflow

from flyteplugins.mlflow import get_mlflow_run, mlflow_run
from tests.helpers import pod_runner

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


def _train(steps: int, block_at: int) -> str:
    """Log ``loss`` per step from the last checkpoint on; on attempt 0, stop at ``block_at`` and wait.

    The step reached is saved as the task's checkpoint after every step, so an attempt that follows a
    killed one carries on where it stopped. ``blocked`` in the working directory says the wait began.
    """
    tctx = flyte.ctx()
    assert tctx is not None and tctx.checkpoint is not None, "run with checkpoint paths"
    checkpoint = tctx.checkpoint
    loaded = checkpoint.load_sync()
    start = int(Path(loaded).read_text()) if loaded is not None else 0
    for step in range(start, steps):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        checkpoint.save_sync(str(step + 1).encode())
        if (
            step + 1 == block_at
            and tctx.attempt_number == 0
            and not os.environ.get("TORCHELASTIC_RESTART_COUNT")
        ):
            Path("blocked.tmp").write_text(_run_id())
            Path("blocked.tmp").rename("blocked")
            time.sleep(600)  # killed here
    return _run_id()


@mlflow_run(on_retry="resume")
@env.task
def resumed_training(steps: int, block_at: int) -> str:
    return _train(steps, block_at)


@mlflow_run(on_retry="new")
@env.task
def replaced_training(steps: int, block_at: int) -> str:
    return _train(steps, block_at)


@mlflow_run
@env.task
async def fails_before_attempt(succeeds_at: int) -> str:
    """Fail on purpose on every attempt before ``succeeds_at``; log the attempt number."""
    tctx = flyte.ctx()
    assert tctx is not None
    mlflow.log_param("attempt", tctx.attempt_number)
    if tctx.attempt_number < succeeds_at:
        raise ValueError(f"attempt {tctx.attempt_number} fails on purpose")
    return _run_id()


@mlflow_run(run_mode="nested")
@env.task
async def blocking_nested_child(value: float) -> str:
    mlflow.log_metric("remote_nested", value)
    Path("blocked.tmp").write_text(_run_id())
    Path("blocked.tmp").rename("blocked")
    await asyncio.sleep(600)  # killed here
    return _run_id()


def _announce_then_block_in_gloo(port: int, rank: int) -> str:
    """Say what this process looks like, then wait in gloo's rendezvous for a peer that never comes.

    The wait is native code (c10d's TCP store): the thread does not come back to Python while it
    lasts. ``blocked`` records the run (``-`` for none), the SIGTERM disposition and whether the
    plugin's SIGTERM watcher thread is running, at that moment.
    """
    import signal
    import threading

    import torch.distributed as dist

    run = get_mlflow_run()
    handler = signal.getsignal(signal.SIGTERM)
    state = {
        "run": run.info.run_id if run is not None else "-",
        "default_sigterm": handler == signal.SIG_DFL,
        "watcher": any(
            t.name == "flyteplugins-mlflow-sigterm" and t.is_alive() for t in threading.enumerate()
        ),
    }
    Path("blocked.tmp").write_text(json.dumps(state))
    Path("blocked.tmp").rename("blocked")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    return "never"


@mlflow_run
@env.task
async def blocks_in_gloo(port: int, rank: int) -> str:
    return _announce_then_block_in_gloo(port, rank)  # on the event loop: the main thread itself blocks


@mlflow_run(async_logging=True)
@env.task
async def queues_then_blocks_in_gloo(port: int, rank: int) -> str:
    for i in range(500):
        mlflow.log_metric("queued", float(i), step=i)  # still queued when SIGTERM comes
    return _announce_then_block_in_gloo(port, rank)


@env.task
async def untracked_blocks_in_gloo(port: int, rank: int) -> str:
    return _announce_then_block_in_gloo(port, rank)  # untracked, in a module that tracks other tasks


@mlflow_run
@env.task
def blocks_in_gloo_sync(port: int, rank: int) -> str:
    return _announce_then_block_in_gloo(port, rank)  # in Flyte's worker thread


@mlflow_run(run_mode="nested")
@env.task
async def model_child(value: float) -> str:
    """Log a tiny sklearn model by hand; return its LoggedModel id."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    features, labels = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]]), np.array([0, 1, 0, 1])
    model = LogisticRegression(max_iter=100, C=value).fit(features, labels)
    info = mlflow.sklearn.log_model(model, name="remote-model", pip_requirements=["scikit-learn"])
    return str(info.model_id)


def main(argv: list[str]) -> int:
    """Run one task of this module as a remote action would (see ``pod_runner``)."""
    return pod_runner.run(__name__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
