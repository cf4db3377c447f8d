"""Elastic (PyTorch) tasks that ``test_elastic.py`` runs the way a pod runs them.

In a pod, Flyte's PyTorch plugin takes its non-local branch: ``elastic_launch`` spawns
``nproc_per_node`` worker processes, each of which unpickles the decorated function and runs it in
the task's Flyte context with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``GROUP_RANK`` set; rank
0's return value is the task's. Each task here trains a tiny model with DDP on CPU (gloo) for a few
steps and logs the loss per step where it has a run. Each rank writes ``rank-<n>.json`` in the
working directory: its process id, what it saw, and, when asked, ``get_mlflow_run_id()``.

``tests/helpers/pods.py`` runs them through ``pod_runner``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import flyte
import mlflow
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import get_mlflow_run, get_mlflow_run_id, mlflow_run
from flyteplugins.pytorch import Elastic

env = flyte.TaskEnvironment(
    name="elastic-child",
    plugin_config=Elastic(nproc_per_node=2, nnodes=1, max_restarts=0, monitor_interval=1),
)

ALL_RANKS = -1


def train(steps: int, fail_rank: int, ask_id: bool) -> str:
    """DDP on a linear model; ``fail_rank`` raises at step 2 (``-1``: every rank, ``-2``: none)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # every rank is in its body now: rank 0's run exists
    record = {
        "pid": os.getpid(),
        "rank": rank,
        "variables": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")},
        "tracked": get_mlflow_run() is not None,
        "run_id": get_mlflow_run_id() if ask_id or rank == 0 else None,
    }
    Path(f"rank-{rank}.json").write_text(json.dumps(record))
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs = torch.randn(32, 4)
    targets = inputs.sum(dim=1, keepdim=True)
    for step in range(steps):
        if step == 2 and fail_rank in (rank, ALL_RANKS):
            raise RuntimeError(f"rank {rank} fails on purpose at step {step}")
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if get_mlflow_run() is not None:
            mlflow.log_metric("loss", loss.item(), step=step)
    dist.destroy_process_group()
    return str(record["run_id"])


@mlflow_run
@env.task
def ddp_auto(steps: int, fail_rank: int, ask_id: bool) -> str:
    return train(steps, fail_rank, ask_id)


@mlflow_run(run_mode="nested")
@env.task
def ddp_nested(steps: int, fail_rank: int, ask_id: bool) -> str:
    return train(steps, fail_rank, ask_id)


@mlflow_run(tracking_uri=os.environ.get("TEST_DECORATOR_URI"))
@env.task
def ddp_uri_on_decorator(steps: int, fail_rank: int, ask_id: bool) -> str:
    """The tracking URI is on the decorator only: rank 1 logs by id with a bare ``MlflowClient()``."""
    result = train(steps, fail_rank, ask_id)
    run_id = get_mlflow_run_id()
    if get_mlflow_run() is None and run_id is not None:
        MlflowClient().log_metric(run_id, "final_loss_rank_1", 1.0)
    return result
