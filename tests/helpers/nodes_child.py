"""Elastic (PyTorch) tasks on two nodes, that ``test_nodes.py`` runs as two pods.

Each pod is Flyte's task runner in a process of its own (``tests/helpers/pods.py``) running the same
action of an ``Elastic(nnodes=2, nproc_per_node=2)`` task: both pods' elastic agents meet at one
c10d rendezvous on loopback (``PET_RDZV_ENDPOINT``), as the pods of one PyTorch job do, and spawn
two gloo workers each: four ranks on two nodes. Each rank trains a tiny model with DDP, logs its
loss per step where it has a run, and writes ``rank-<rank>-<restart>.json`` in its pod's working
directory: its process id, its variables, its run, whether the plugin's SIGTERM handler is installed
and, when asked, ``get_mlflow_run_id()``. The pod without rank 0 returns ``None``, as Flyte's
Elastic does, so the tasks return ``str | None``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import flyte
import mlflow

from flyteplugins.mlflow import get_mlflow_run, get_mlflow_run_id, mlflow_run
from flyteplugins.mlflow._runs import sigterm as _signals
from flyteplugins.pytorch import Elastic

VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE")

once = flyte.TaskEnvironment(
    name="nodes-once", plugin_config=Elastic(nproc_per_node=2, nnodes=2, max_restarts=0, monitor_interval=1)
)
restarting = flyte.TaskEnvironment(
    name="nodes-restarting",
    plugin_config=Elastic(nproc_per_node=2, nnodes=2, max_restarts=1, monitor_interval=1),
)


def train(steps: int, fail_rank: int, fail_restarts: int, ask_id: bool) -> str | None:
    """DDP on a linear model; rank ``fail_rank`` raises at step 2 while fewer than ``fail_restarts``
    restarts have happened. Each step takes 0.25 s, so that monitors sampling every 0.25 s see it."""
    import torch
    import torch.distributed as dist
    from torch._C._distributed_c10d import PrefixStore, TCPStore  # what torch.distributed re-exports
    from torch.nn.parallel import DistributedDataParallel

    rank, restart = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    # The agents share one store across restarts: each restart's group keeps its keys apart.
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    world = int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", store=PrefixStore(f"restart-{restart}", store), rank=rank, world_size=world
    )
    run = get_mlflow_run()
    rank0_run_id = get_mlflow_run_id() if ask_id or rank == 0 else None
    record = {
        "pid": os.getpid(),
        "rank": rank,
        "restart": restart,
        "variables": {k: os.environ.get(k) for k in VARIABLES},
        "run_id": None if run is None else run.info.run_id,
        "rank0_run_id": rank0_run_id,
        "sigterm_handler": _signals.installed(),
    }
    Path(f"rank-{rank}-{restart}.json").write_text(json.dumps(record))
    torch.manual_seed(rank)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs = torch.randn(32, 4)
    targets = inputs.sum(dim=1, keepdim=True)
    for step in range(steps):
        if step == 2 and rank == fail_rank and restart < fail_restarts:
            raise RuntimeError(f"rank {rank} fails on purpose at step {step} (restart {restart})")
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if run is not None:
            mlflow.log_metric("loss", loss.item(), step=step)
        time.sleep(0.25)
    dist.destroy_process_group()
    return rank0_run_id if rank == 0 else None


@mlflow_run(log_system_metrics=True)
@once.task
def nodes_global(steps: int, fail_rank: int, fail_restarts: int, ask_id: bool) -> str | None:
    result = train(steps, fail_rank, fail_restarts, ask_id)
    if os.environ["GROUP_RANK"] == "1" and os.environ["LOCAL_RANK"] == "0":
        time.sleep(1.5)  # node 1's monitor outlives rank 0's body: rank 0 must wait for it to stop
    return result


@mlflow_run(rank_scope="worker", log_inputs=True)  # rank 0's run alone records the inputs
@once.task
def nodes_worker(steps: int, fail_rank: int, fail_restarts: int, ask_id: bool) -> str | None:
    return train(steps, fail_rank, fail_restarts, ask_id)


@mlflow_run(rank_scope="worker", log_system_metrics=True)
@restarting.task
def nodes_restart(steps: int, fail_rank: int, fail_restarts: int, ask_id: bool) -> str | None:
    return train(steps, fail_rank, fail_restarts, ask_id)
