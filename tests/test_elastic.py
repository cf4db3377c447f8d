"""Distributed training on real worker processes: an ``Elastic`` task run the way a pod runs it.

Flyte's local mode runs an Elastic task's body once, in the caller, with no workers; a pod takes the
plugin's other branch, where ``elastic_launch`` spawns the workers. So each case here runs a task of
``tests.helpers.elastic_child`` through Flyte's task runner in a subprocess
(``tests/helpers/pods.py``), which spawns two gloo workers that train a tiny model with DDP. Every
request reaches the tracking server through a relay that names the process that sent it, so requests
are counted per rank, at the server's door.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flyte
import psutil
import pytest
from flyte._internal.runtime.convert import convert_from_native_to_inputs
from flyte._internal.runtime.entrypoints import load_task
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.pods import RESOLVER, Action, make_inputs
from tests.helpers.support import MlflowServer, Relay, own_run_id

env = flyte.TaskEnvironment(name="elastic-tests")

MODULE = "tests.helpers.elastic_child"
STEPS = 5
NO_RANK, ALL_RANKS = -2, -1


def pid_of(port: int) -> int | None:
    """The process whose TCP connection has the local port ``port`` (the sender of a request)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid is not None:
            return int(conn.pid)
    return None


_relay: list[Relay] = []


@pytest.fixture
def relay(mlflow_server: MlflowServer) -> Iterator[Relay]:
    """A relay in front of the session server that records which process sent each request."""
    made = Relay(mlflow_server.uri, identify=pid_of)
    _relay.append(made)
    try:
        yield made
    finally:
        _relay.clear()
        made.close()


def run_pod(action: Action) -> dict[str, Any]:
    """Run the action's attempt 0 to its end; return how it ended and what each rank recorded."""
    proc = action.start(0)
    out, _ = proc.communicate(timeout=300)
    ranks = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in action.workdir.glob("rank-*.json")}
    return {
        "code": proc.returncode,
        # The task failed: Flyte wrote its error file, or the pod's process died before it could. (When
        # a rank dies mid-collective, gloo's message on the other rank holds "[/path:line]", and
        # Flyte's rich log handler, with markup on, raises on it while reporting the failure.)
        "failed": action.failed() or proc.returncode != 0,
        "log": out.decode(errors="replace")[-4000:],
        "ranks": ranks,
    }


@mlflow_run
@env.task
async def parent_of_a_pod(task_name: str, workdir: str, fail_rank: int, ask_id: bool) -> str:
    """A tracked parent whose child runs in a pod of its own; reports the pod as JSON."""
    child = load_task(RESOLVER, "mod", MODULE, "instance", task_name)
    inputs = await convert_from_native_to_inputs(
        child.native_interface, steps=STEPS, fail_rank=fail_rank, ask_id=ask_id
    )
    data = inputs.proto_inputs.SerializeToString(deterministic=True)
    action = Action(Path(workdir), task_name, data, module=MODULE)
    report = await asyncio.to_thread(run_pod, action)
    return json.dumps({**report, "parent": own_run_id()})


def requests_by_rank(relay: Relay, ranks: dict[int, Any]) -> dict[str, Counter[str]]:
    """The requests each rank sent; ``test`` for this process (a tracked parent), ``other`` for any other
    (the pod's own process, where Elastic's launcher runs, or an unknown sender)."""
    rank_of: dict[object, str] = {record["pid"]: f"rank {rank}" for rank, record in ranks.items()}
    rank_of[os.getpid()] = "test"
    counts: dict[str, Counter[str]] = {name: Counter() for name in rank_of.values()}
    for sender, _, path in relay.senders:
        name = rank_of.get(sender, "other")
        counts.setdefault(name, Counter())[path.removeprefix("/api/2.0/mlflow/")] += 1
    return counts


CASES = {
    # name: (task, under a tracked parent, ask_id on rank 1)
    "top-level": ("ddp_auto", False, True),
    "auto-under-a-parent": ("ddp_auto", True, True),
    "nested-under-a-parent": ("ddp_nested", True, False),
}


def _run_case(
    task_name: str,
    under_parent: bool,
    tmp_path: Path,
    relay: Relay,
    experiment: tuple[str, str],
    **values: Any,
) -> dict[str, Any]:
    ctx = mlflow_config(tracking_uri=relay.uri, experiment_id=experiment[1])
    if under_parent:
        out = flyte.with_runcontext(mode="local", custom_context=ctx).run(
            parent_of_a_pod, task_name=task_name, workdir=str(tmp_path), **values
        )
        report: dict[str, Any] = json.loads(out.outputs()[0])
    else:
        inputs = make_inputs(task_name, ctx, module=MODULE, steps=STEPS, **values)
        report = run_pod(Action(tmp_path, task_name, inputs, module=MODULE))
    report["ranks"] = {int(k): v for k, v in report["ranks"].items()}
    return report


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_workers_track_one_run_from_rank_0(
    case: str, tmp_path: Path, relay: Relay, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Two workers train with DDP: rank 0 logs every step into one run (the parent's in ``auto``), rank
    1 sends nothing unless it asks for that run's id, which it then gets, and no run is left RUNNING."""
    task_name, under_parent, ask_id = CASES[case]
    report = _run_case(task_name, under_parent, tmp_path, relay, experiment, fail_rank=NO_RANK, ask_id=ask_id)
    assert report["code"] == 0 and not report["failed"], report["log"]
    ranks = report["ranks"]
    assert sorted(ranks) == [0, 1]
    for rank, record in ranks.items():
        assert record["variables"] == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "GROUP_RANK": "0",
        }
        assert record["tracked"] is (rank == 0)
    rank0_id = ranks[0]["run_id"]

    runs = {r.info.run_id: r for r in client.search_runs([experiment[1]])}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    if task_name == "ddp_auto" and under_parent:
        assert list(runs) == [report["parent"]] == [rank0_id], "the workers log into the parent's run"
    elif under_parent:
        assert set(runs) == {report["parent"], rank0_id}
        assert runs[rank0_id].data.tags["mlflow.parentRunId"] == report["parent"]
    else:
        assert list(runs) == [rank0_id]
    history = client.get_metric_history(rank0_id, "loss")
    assert sorted(m.step for m in history) == list(range(STEPS))

    sent = requests_by_rank(relay, ranks)
    if ask_id:
        assert ranks[1]["run_id"] == rank0_id
        # The id is in the context when rank 0 shares its caller's run; otherwise one search finds it.
        assert sent["rank 1"] == (Counter() if under_parent else Counter({"runs/search": 1}))
    else:
        assert sent["rank 1"] == Counter()
    rank0 = {"runs/log-metric": STEPS}
    if not under_parent:
        rank0.update({"runs/create": 1, "runs/update": 1, "runs/search": 1})  # the root: its sweep
    elif task_name == "ddp_auto":
        rank0.update({"runs/get": 1})  # the parent's run, fetched from another process
    else:
        rank0.update({"runs/create": 1, "runs/update": 1})
    assert sent["rank 0"] == Counter(rank0)
    assert sum(sent.get("other", Counter()).values()) == 0, "the pod's launcher process sends nothing"


@pytest.mark.parametrize(("fail_rank", "label"), [(ALL_RANKS, "every-rank"), (0, "rank-0"), (1, "rank-1")])
def test_a_failing_rank_ends_the_run_failed(
    fail_rank: int,
    label: str,
    tmp_path: Path,
    relay: Relay,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """When a rank raises, the task fails and rank 0's run ends FAILED, never FINISHED or RUNNING. When
    only rank 1 raises, rank 1 marks the run FAILED (naming itself) before the launcher stops rank 0."""
    report = _run_case("ddp_auto", False, tmp_path, relay, experiment, fail_rank=fail_rank, ask_id=False)
    assert report["failed"], report["log"]
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.info.run_id == report["ranks"][0]["run_id"]
    if fail_rank == 1:
        assert run.data.tags["flyte.failed_rank"] == "1"


def test_the_distributed_example_runs_as_a_pod_with_two_workers(
    tmp_path: Path, client: MlflowClient, tracking_uri: str
) -> None:
    """``examples/distributed.py``'s task, run the way a pod runs it: one run, rank 0's loss for every
    step, and rank 1's final loss, logged by id to the run it found with ``get_mlflow_run_id()``."""
    ctx = mlflow_config(tracking_uri=tracking_uri)
    inputs = make_inputs("train_ddp", ctx, module="examples.distributed", steps=8, lr=0.05)
    report = run_pod(Action(tmp_path, "train_ddp", inputs, module="examples.distributed"))
    assert report["code"] == 0 and not report["failed"], report["log"]
    experiment = client.get_experiment_by_name("flyte-ddp")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], filter_string="params.steps = '8'", max_results=1)
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(8))
    assert "final_loss_rank_1" in run.data.metrics
    assert not [r for r in client.search_runs([experiment.experiment_id]) if r.info.status == "RUNNING"]


def test_a_failing_rank_never_ends_a_run_it_only_shares(
    tmp_path: Path, relay: Relay, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """In ``auto`` under a tracked parent the workers share the parent's run: when rank 1 fails, the
    pod's task fails, but the parent's run is the parent's to end (here it ends FINISHED)."""
    report = _run_case("ddp_auto", True, tmp_path, relay, experiment, fail_rank=1, ask_id=False)
    assert report["failed"], report["log"]
    (run,) = client.search_runs([experiment[1]])
    assert run.info.run_id == report["parent"]
    assert run.info.status == "FINISHED"
    assert "flyte.failed_rank" not in run.data.tags


def test_other_ranks_reach_the_decorators_tracking_uri_with_a_bare_client(
    tmp_path: Path, client: MlflowClient, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """With the tracking URI given only to ``@mlflow_run(tracking_uri=...)`` (not in the context, not in
    ``MLFLOW_TRACKING_URI``), rank 1's ``MlflowClient()`` reaches that server while the task runs: its
    metric lands in rank 0's run."""
    inputs = make_inputs(
        "ddp_uri_on_decorator",
        mlflow_config(experiment_id=experiment[1]),
        module=MODULE,
        steps=STEPS,
        fail_rank=NO_RANK,
        ask_id=True,
    )
    action = Action(tmp_path, "ddp_uri_on_decorator", inputs, module=MODULE)
    proc = action.start(0, {"TEST_DECORATOR_URI": tracking_uri})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and not action.failed(), out.decode(errors="replace")[-3000:]
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FINISHED" and "final_loss_rank_1" in run.data.metrics
