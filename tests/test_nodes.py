"""Distributed training on two nodes: two pods of one ``Elastic(nnodes=2, nproc_per_node=2)`` job.

Each pod is Flyte's task runner in a subprocess (``tests/helpers/pods.py``) running the same action
of a task of ``tests.helpers.nodes_child``; the pods' elastic agents meet at a c10d rendezvous on
loopback, and four gloo workers train with DDP. Every request reaches the tracking server through a
relay that names the process that sent it, in the order they arrive, so requests are counted per
rank and ordered against rank 0's final status. MLflow's monitors sample every 0.25 s here
(``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``), so a training of a few seconds has several samples.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import mlflow_config
from tests.helpers.pods import Action, make_inputs
from tests.helpers.support import MlflowServer, Relay, free_port
from tests.test_elastic import pid_of

STEPS = 6
NO_RANK = -1
MODULE = "tests.helpers.nodes_child"
SAMPLING = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
NODE_METRICS = ("cpu_utilization_percentage", "system_memory_usage_megabytes")
Job = dict[str, Any]


@pytest.fixture
def relay(mlflow_server: MlflowServer) -> Iterator[Relay]:
    """A relay in front of the session server that records which process sent each request."""
    made = Relay(mlflow_server.uri, identify=pid_of)
    try:
        yield made
    finally:
        made.close()


def run_job(
    tmp_path: Path,
    task: str,
    context: dict[str, str],
    module: str = MODULE,
    sampling: str = "0.25",
    **values: Any,
) -> Job:
    """Run one action of ``task`` as two pods at once; return how each ended and what each rank wrote."""
    inputs = make_inputs(task, context, module=module, **values)
    first = Action(_mkdir(tmp_path / "pod-a"), task, inputs, module=module)
    second = Action(_mkdir(tmp_path / "pod-b"), task, inputs, module=module)
    second.run_name, second.action = first.run_name, first.action  # one action, two pods
    extra = {"PET_RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", SAMPLING: sampling}
    procs = [(pod, pod.start(0, extra)) for pod in (first, second)]
    ended = []
    for pod, proc in procs:
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        (pod.workdir / "pod.log").write_bytes(out)
        ended.append(
            {"failed": pod.failed() or proc.returncode != 0, "log": out.decode(errors="replace")[-3000:]}
        )
    records = [json.loads(p.read_text()) for p in tmp_path.glob("pod-*/rank-*.json")]
    return {"pods": ended, "records": records}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def by_process(relay: Relay, records: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """The requests of each rank (of its last restart, ``rank <r>``), and ``other`` for any other sender."""
    name = {
        r["pid"]: f"rank {r['rank']}" + (f" (restart {r['restart']})" if r["restart"] else "")
        for r in records
    }
    counts: dict[str, Counter[str]] = {n: Counter() for n in name.values()}
    for sender, _, path in relay.senders:
        counts.setdefault(name.get(sender, "other"), Counter())[path.removeprefix("/api/2.0/mlflow/")] += 1
    return counts


def runs_of(client: MlflowClient, experiment_id: str) -> list[Run]:
    return client.search_runs([experiment_id], max_results=100)


def samples(client: MlflowClient, run_id: str, node: str) -> dict[str, int]:
    """How many values each of the node's CPU and memory metrics has in the run."""
    return {m: len(client.get_metric_history(run_id, f"system/{node}/{m}")) for m in NODE_METRICS}


def test_every_node_monitors_into_rank_0s_run(
    tmp_path: Path, relay: Relay, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """With ``log_system_metrics=True`` on two nodes, the job has one run, holding both nodes' CPU and
    memory under ``system/node-0/`` and ``system/node-1/`` (several samples each) and each node's host;
    only the local-rank-0 processes send anything (ranks 1 and 3 and the launchers none), and no
    request of any process follows rank 0's final status."""
    ctx = mlflow_config(tracking_uri=relay.uri, experiment_id=experiment[1])
    job = run_job(
        tmp_path, "nodes_global", ctx, steps=STEPS, fail_rank=NO_RANK, fail_restarts=0, ask_id=False
    )
    assert not any(pod["failed"] for pod in job["pods"]), job["pods"]
    records = {r["rank"]: r for r in job["records"]}
    assert sorted(records) == [0, 1, 2, 3]
    assert {r["variables"]["GROUP_RANK"] for r in records.values()} == {"0", "1"}
    assert [records[r]["sigterm_handler"] for r in range(4)] == [True, False, False, False], "rank 0 only"
    (run,) = runs_of(client, experiment[1])
    assert run.info.status == "FINISHED" and run.info.run_id == records[0]["run_id"]
    print("runs:", [(r.info.run_name, r.info.status) for r in runs_of(client, experiment[1])])
    names = sorted(k for k in run.data.metrics if k.startswith("system/"))
    print("system metrics:", names)
    assert {n.split("/")[1] for n in names} == {"node-0", "node-1"}, "every metric names its node"
    assert not [n for n in names if "/gpu_" in n], "no GPU here, and no nvidia-ml-py"
    for node in ("node-0", "node-1"):
        counted = samples(client, run.info.run_id, node)
        print(node, counted)
        assert min(counted.values()) >= 2, counted
    assert {"flyte.node.0.host", "flyte.node.1.host"} <= set(run.data.tags)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(STEPS))

    sent = by_process(relay, job["records"])
    print("requests:", {k: dict(v) for k, v in sent.items()})
    assert sent["rank 1"] == sent["rank 3"] == Counter() and sum(sent.get("other", Counter()).values()) == 0
    monitor = {"runs/get", "runs/log-batch"}  # a monitor's status check per sample, and its values
    assert {k: v for k, v in sent["rank 0"].items() if k not in monitor} == {
        "runs/create": 1,
        "runs/log-metric": STEPS,
        "runs/update": 1,
        "runs/search": 1,  # the root's sweep, after the status
    }
    assert set(sent["rank 2"]) == {"runs/search", *monitor}  # finds the run, tags its host, monitors
    pids = {r["pid"]: r["rank"] for r in job["records"]}
    order = [(pids.get(sender), path) for sender, _, path in relay.senders]
    final = max(i for i, (rank, path) in enumerate(order) if rank == 0 and path.endswith("runs/update"))
    assert [o for o in order[final + 1 :] if not o[1].endswith("runs/search")] == [], "after the status"


def test_the_distributed_examples_two_node_task_runs_as_two_pods(
    tmp_path: Path, client: MlflowClient, tracking_uri: str
) -> None:
    """``examples/distributed.py``'s ``train_nodes``, run as two pods of two workers: both pods succeed
    (the one without rank 0 returns ``None``, which its ``str | None`` type allows), and the job's one
    run holds rank 0's loss, the other ranks' final losses and both nodes' system metrics."""
    ctx = mlflow_config(tracking_uri=tracking_uri)
    job = run_job(
        tmp_path, "train_nodes", ctx, module="examples.distributed", sampling="0.1", steps=150, lr=0.05
    )
    assert not any(pod["failed"] for pod in job["pods"]), job["pods"]
    experiment = client.get_experiment_by_name("flyte-ddp")  # the example's
    assert experiment is not None
    query = "params.steps = '150' and params.world_size = '4'"
    (run,) = client.search_runs([experiment.experiment_id], filter_string=query)
    assert run.info.status == "FINISHED"
    assert {f"final_loss_rank_{r}" for r in (1, 2, 3)} | {"loss"} <= set(run.data.metrics)
    assert run.data.params["world_size"] == "4"
    for node in ("node-0", "node-1"):
        assert min(samples(client, run.info.run_id, node).values()) >= 1, node


def rank_runs(client: MlflowClient, experiment_id: str) -> tuple[list[Run], dict[str, list[Run]]]:
    """The job's runs (no parent) and the rank runs, by name, oldest first."""
    found = sorted(runs_of(client, experiment_id), key=lambda r: r.info.start_time)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    ranks: dict[str, list[Run]] = {}
    for r in found:
        if "mlflow.parentRunId" in r.data.tags:
            ranks.setdefault(r.info.run_name, []).append(r)
    return parents, ranks


def test_rank_scope_worker_gives_every_rank_a_nested_run(
    tmp_path: Path, relay: Relay, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Under ``rank_scope="worker"`` on two nodes: one parent (rank 0's) and three rank runs nested
    under it, named ``<task>-rank-<r>`` and tagged with rank, local rank, node and world size, each
    with its own loss history; ``get_mlflow_run_id()`` is rank 0's run on every rank."""
    ctx = mlflow_config(tracking_uri=relay.uri, experiment_id=experiment[1])
    job = run_job(tmp_path, "nodes_worker", ctx, steps=STEPS, fail_rank=NO_RANK, fail_restarts=0, ask_id=True)
    assert not any(pod["failed"] for pod in job["pods"]), job["pods"]
    records = {r["rank"]: r for r in job["records"]}
    (parent,), ranks = rank_runs(client, experiment[1])
    print("runs:", parent.info.run_name, sorted(ranks))
    assert parent.info.status == "FINISHED" and parent.info.run_id == records[0]["run_id"]
    assert sorted(ranks) == [f"nodes_worker-rank-{r}" for r in (1, 2, 3)]
    for r in (1, 2, 3):
        (run,) = ranks[f"nodes_worker-rank-{r}"]
        record = records[r]
        assert run.info.run_id == record["run_id"] and record["rank0_run_id"] == parent.info.run_id
        assert run.info.status == "FINISHED" and record["sigterm_handler"], "a rank that owns a run"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "flyte.root_action" not in run.data.tags, "rank 0 is the root: its sweep may not wait"
        variables = record["variables"]
        assert {k: run.data.tags[f"flyte.{k}"] for k in ("rank", "local_rank", "node", "world_size")} == {
            "rank": str(r),
            "local_rank": variables["LOCAL_RANK"],
            "node": variables["GROUP_RANK"],
            "world_size": "4",
        }
    for run in [parent, *(runs[0] for runs in ranks.values())]:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(
            range(STEPS)
        )
    sent = by_process(relay, job["records"])
    print("requests:", {k: dict(v) for k, v in sent.items()})
    for r in (1, 2, 3):
        searches = sent[f"rank {r}"].pop("runs/search")  # repeated while rank 0 has no run yet
        assert searches >= 1
        assert sent[f"rank {r}"] == Counter({"runs/create": 1, "runs/log-metric": STEPS, "runs/update": 1})
    assert sent["rank 0"] == Counter(
        {"runs/create": 1, "runs/log-batch": 1, "runs/log-metric": STEPS, "runs/update": 1, "runs/search": 1}
    )  # its log-batch: the inputs (log_inputs=True), which the rank runs do not record
    assert parent.data.params == {
        "steps": str(STEPS),
        "fail_rank": str(NO_RANK),
        "fail_restarts": "0",
        "ask_id": "True",
    }
    assert sum(sent.get("other", Counter()).values()) == 0


def test_a_failing_rank_on_the_second_node_fails_its_run_and_the_job(
    tmp_path: Path, relay: Relay, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Rank 3 raises: its own run ends FAILED, rank 0's run ends FAILED naming a failed rank, the job
    fails, and no run is left RUNNING."""
    ctx = mlflow_config(tracking_uri=relay.uri, experiment_id=experiment[1])
    job = run_job(tmp_path, "nodes_worker", ctx, steps=STEPS, fail_rank=3, fail_restarts=1, ask_id=False)
    assert any(pod["failed"] for pod in job["pods"]), job["pods"]
    (parent,), ranks = rank_runs(client, experiment[1])
    print("runs:", parent.info.status, {n: [r.info.status for r in rs] for n, rs in ranks.items()})
    assert parent.info.status == "FAILED" and parent.data.tags["flyte.failed_rank"] == "3", "the first"
    assert ranks["nodes_worker-rank-3"][0].info.status == "FAILED"
    # the others fail on gloo's errors, or are stopped by their agent (SIGTERM): never left RUNNING
    assert all(r.info.status in ("FAILED", "KILLED") for rs in ranks.values() for r in rs)


@pytest.mark.parametrize("on_retry", ["new", "resume"])
def test_an_elastic_restart_on_two_nodes_follows_on_retry_per_rank(
    on_retry: Literal["new", "resume"],
    tmp_path: Path,
    relay: Relay,
    client: MlflowClient,
    experiment: tuple[str, str],
) -> None:
    """Rank 3 fails once and the agents restart the workers: under ``new`` every rank's attempt gets a
    run of its own (the earlier ones ended and replaced), under ``resume`` every rank reopens its run
    (``flyte.attempts`` "0,0.1"), never a duplicate; both nodes' monitors start again for the new or
    resumed run."""
    ctx = mlflow_config(tracking_uri=relay.uri, experiment_id=experiment[1], on_retry=on_retry)
    job = run_job(tmp_path, "nodes_restart", ctx, steps=STEPS, fail_rank=3, fail_restarts=1, ask_id=False)
    assert not any(pod["failed"] for pod in job["pods"]), job["pods"]
    parents, ranks = rank_runs(client, experiment[1])
    print(
        "runs:", [p.info.status for p in parents], {n: [r.info.status for r in rs] for n, rs in ranks.items()}
    )
    assert sorted(ranks) == [f"nodes_restart-rank-{r}" for r in (1, 2, 3)]
    last = parents[-1]
    assert last.info.status == "FINISHED"
    if on_retry == "new":
        assert len(parents) == 2 and parents[0].info.status != "RUNNING"
        assert last.data.tags["flyte.replaces"] == parents[0].info.run_id
        for runs in ranks.values():
            assert len(runs) == 2 and runs[0].info.status != "RUNNING" and runs[1].info.status == "FINISHED"
            assert runs[1].data.tags["flyte.replaces"] == runs[0].info.run_id
    else:
        assert len(parents) == 1 and last.data.tags["flyte.attempts"] == "0,0.1"
        for runs in ranks.values():
            (run,) = runs
            assert run.info.status == "FINISHED" and run.data.tags["flyte.attempts"] == "0,0.1"
    for node in ("node-0", "node-1"):
        counted = samples(client, last.info.run_id, node)
        print(on_retry, node, counted)
        assert min(counted.values()) >= 2, counted
