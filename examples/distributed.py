"""Distributed training with Flyte's PyTorch plugin: two DDP workers, one MLflow run, kept by rank 0.

The task is a plain (sync) function on a ``TaskEnvironment`` with ``plugin_config=Elastic(...)``:
on a cluster, Flyte starts it in a pod whose PyTorch elastic agent spawns ``nproc_per_node`` worker
processes, each running the task body with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and
``GROUP_RANK`` set. (Elastic cannot run ``async def`` tasks.) The plugin gives rank 0 the task's
MLflow run; every other rank runs untracked and sends nothing, unless it asks for rank 0's run id
with ``get_mlflow_run_id()``, as rank 1 does here to add its own final loss to the run.

``train_nodes`` is the same training as a job of two nodes (two pods of two workers each) with
``log_system_metrics=True``: the first worker of each node monitors its machine into rank 0's run,
under ``system/node-0/...`` and ``system/node-1/...``. The pod without rank 0 returns ``None``, so the
task returns ``str | None``.

Flyte's local mode runs an Elastic task's body once, in the calling process, with no workers and
no ``RANK``; the body then trains alone in a process group of one. So
``python examples/distributed.py [TRACKING_URI]`` works on a laptop (without a URI it tracks into
``.demo/``), and the tests also run the tasks the way pods run them: ``train_ddp`` as one pod of two
workers, ``train_nodes`` as two pods.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import flyte
import mlflow
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import (
    get_mlflow_run,
    get_mlflow_run_id,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.pytorch import Elastic

EXPERIMENT = "flyte-ddp"

env = flyte.TaskEnvironment(
    name="mlflow-ddp", plugin_config=Elastic(nproc_per_node=2, nnodes=1, max_restarts=0)
)
nodes = flyte.TaskEnvironment(
    name="mlflow-ddp-nodes", plugin_config=Elastic(nproc_per_node=2, nnodes=2, max_restarts=0)
)


def _join_process_group() -> tuple[int, int]:
    """Join the job's gloo process group: the launcher's (``RANK`` is set), else a group of one."""
    import torch.distributed as dist

    if "RANK" in os.environ:
        dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from the launcher
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def _fit(steps: int, lr: float) -> str | None:
    """Fit a linear model with DDP for ``steps`` steps; rank 0 logs the loss of every step.

    Returns:
        On rank 0, the id of the run it logged to; ``None`` on the other ranks.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world_size = _join_process_group()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    inputs = torch.randn(64, 4) + rank  # each rank has its own shard of the data
    targets = inputs.sum(dim=1, keepdim=True)
    tracked = get_mlflow_run() is not None  # True on rank 0 only
    if tracked:
        mlflow.log_params({"steps": steps, "lr": lr, "world_size": world_size})
    loss = torch.tensor(0.0)
    for step in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if tracked:
            mlflow.log_metric("loss", loss.item(), step=step)
    run_id = get_mlflow_run_id()  # rank 0's run, on every rank
    if not tracked and run_id is not None:  # MLflow's tracking URI is rank 0's here
        MlflowClient().log_metric(run_id, f"final_loss_rank_{rank}", loss.item())
    dist.destroy_process_group()
    return run_id if rank == 0 else None


@mlflow_run(experiment_name=EXPERIMENT)
@env.task
def train_ddp(steps: int, lr: float) -> str:
    """Fit a linear model with DDP on two workers in one pod; rank 0 logs the loss of every step.

    Returns:
        The id of the run that rank 0 logged to (the task's output is rank 0's).
    """
    return str(_fit(steps, lr) or get_mlflow_run_id())


@mlflow_run(experiment_name=EXPERIMENT, log_system_metrics=True)
@nodes.task
def train_nodes(steps: int, lr: float) -> str | None:
    """The same training on two nodes of two workers each, with every node's system metrics in the
    run: ``system/node-0/...`` and ``system/node-1/...`` (see docs/distributed-training.md).

    Returns:
        On the pod with rank 0, the id of the run; ``None`` on the other pod, as Flyte's Elastic
        returns there.
    """
    return _fit(steps, lr)


def default_tracking_uri() -> str:
    """The SQLite store that ``make demo`` uses, under ``.demo/`` (or ``$FLYTE_MLFLOW_DEMO_DIR``)."""
    directory = Path(os.environ.get("FLYTE_MLFLOW_DEMO_DIR") or Path(__file__).resolve().parents[1] / ".demo")
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory.resolve() / 'mlflow.db'}"


def main(tracking_uri: str | None = None, steps: int = 20) -> str:
    """Run the training locally (one process) and print where its run is.

    Args:
        tracking_uri: where to track; defaults to ``$FLYTE_MLFLOW_DEMO_URI``, then to ``.demo/``.
        steps: training steps.

    Returns:
        The run's id.
    """
    uri = tracking_uri or os.environ.get("FLYTE_MLFLOW_DEMO_URI") or default_tracking_uri()
    run = flyte.with_runcontext(mode="local", custom_context=mlflow_config(tracking_uri=uri)).run(
        train_ddp, steps=steps, lr=0.05
    )
    run_id = str(run.outputs()[0])
    print(f"DDP run {run_id} in {uri} (experiment {EXPERIMENT!r}): {steps} steps of loss")
    if uri.startswith("sqlite:"):
        print(f"Browse the runs with: mlflow ui --backend-store-uri {uri}")
    return run_id


if __name__ == "__main__":
    flyte.init()
    main(sys.argv[1] if len(sys.argv) > 1 else None)
