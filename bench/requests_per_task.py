"""Scenario (a): how many requests the plugin itself sends per task, counted at the server.

Every task here logs nothing, so each request the counting proxy sees is one the plugin made. A
child's cost is the difference between a parent with ``N`` children and the parent alone, divided
by ``N``. The untracked column runs the same shape of workflow with plain Flyte tasks. A top-level
task is a workflow's root, so its count includes the one sweep for runs left ``RUNNING`` under it.

Run: ``python -m bench.requests_per_task`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

from collections import Counter

import flyte
from mlflow.tracking import MlflowClient

from bench._support import Proxy, scenario_server, unique
from flyteplugins.mlflow import MlflowConfig, mlflow_config, mlflow_run
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY

env = flyte.TaskEnvironment(name="bench-requests-per-task")

CHILDREN = 10
REPEAT = 5


@env.task
async def plain_child() -> int:
    return 0


@env.task
async def plain_parent(n: int) -> int:
    for _ in range(n):
        await plain_child()
    return n


@mlflow_run
@env.task
async def top() -> int:
    return 0


@mlflow_run(rank=1)
@env.task
async def rank_one() -> int:
    return 1


@mlflow_run
@env.task
async def auto_child() -> int:
    return 0


@mlflow_run(run_mode="nested")
@env.task
async def nested_child() -> int:
    return 0


@mlflow_run(run_mode="new")
@env.task
async def new_child() -> int:
    return 0


CHILD_TASKS = {"auto": auto_child, "nested": nested_child, "new": new_child}


@mlflow_run
@env.task
async def parent(kind: str, n: int) -> int:
    child = CHILD_TASKS[kind]
    for _ in range(n):
        await child()
    return n


def counted(
    proxy: Proxy, config: MlflowConfig | dict[str, str], task: object, **inputs: object
) -> list[tuple[str, str]]:
    """Run ``task`` locally with ``config`` and return the requests the server saw meanwhile."""
    mark = proxy.mark()
    flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs)
    return proxy.requests(mark)


def endpoints(seen: list[tuple[str, str]]) -> str:
    """``2 x runs/create`` style summary of a request list."""
    counts = Counter(path.removeprefix("/api/2.0/mlflow/") for _, path in seen)
    return ", ".join(f"{n} x {path}" for path, n in sorted(counts.items())) or "none"


def main() -> None:
    """Print requests per task for each kind of task, next to the untracked baseline."""
    flyte.init()
    with scenario_server("requests per task, counted at the server") as server, Proxy(server.uri) as proxy:
        client = MlflowClient(server.uri)
        by_id = mlflow_config(tracking_uri=proxy.uri, experiment_id=client.create_experiment(unique("reqs")))
        rows: list[tuple[str, float, float, str]] = []

        def per_task(total: int, base: int, n: int) -> float:
            return (total - base) / n

        # untracked baseline: the same shapes with plain Flyte tasks
        plain_top = len(counted(proxy, by_id, plain_parent, n=0))
        plain_children = len(counted(proxy, by_id, plain_parent, n=CHILDREN))

        seen = [r for _ in range(REPEAT) for r in counted(proxy, by_id, top)]
        rows.append(("top-level, experiment_id", len(seen) / REPEAT, plain_top, endpoints(seen[:3])))

        name = unique("reqs-by-name")
        client.create_experiment(name)
        by_name = mlflow_config(tracking_uri=proxy.uri, experiment_name=name)
        first = counted(proxy, by_name, top)
        rows.append(("top-level, experiment_name, 1st in process", len(first), plain_top, endpoints(first)))
        created = counted(
            proxy, mlflow_config(tracking_uri=proxy.uri, experiment_name=unique("reqs-new")), top
        )
        rows.append(
            ("top-level, experiment_name not created yet", len(created), plain_top, endpoints(created))
        )
        later = [r for _ in range(REPEAT) for r in counted(proxy, by_name, top)]
        rows.append(
            ("top-level, experiment_name, later", len(later) / REPEAT, plain_top, endpoints(later[:3]))
        )

        alone = len(counted(proxy, by_id, parent, kind="auto", n=0))
        for kind in ("auto", "nested", "new"):
            seen = counted(proxy, by_id, parent, kind=kind, n=CHILDREN)
            child_seen = seen[1:-2]  # the parent's create is first; its final update and sweep last
            rows.append(
                (
                    f"{kind} child (parent's process)",
                    per_task(len(seen), alone, CHILDREN),
                    per_task(plain_children, plain_top, CHILDREN),
                    endpoints(child_seen[:2]) if child_seen else "none",
                )
            )

        # A child in a pod of its own only has what its parent put in the Flyte context:
        parent_run = client.create_run(by_id["mlflow_experiment_id"])
        remote = {
            **by_id,
            PARENT_RUN_KEY: parent_run.info.run_id,
            PARENT_EXPERIMENT_KEY: parent_run.info.experiment_id,
        }
        seen = counted(proxy, remote, auto_child)
        client.set_terminated(parent_run.info.run_id)
        rows.append(("auto child (a process of its own, emulated)", len(seen), 0.0, endpoints(seen)))

        fresh = unique("reqs-children-by-name")
        client.create_experiment(fresh)
        by_fresh_name = mlflow_config(tracking_uri=proxy.uri, experiment_name=fresh)
        seen = counted(proxy, by_fresh_name, parent, kind="nested", n=CHILDREN)
        lookups = sum(1 for _, path in seen if "experiments/" in path)
        rows.append(
            (
                "nested child of a parent set by experiment_name",
                per_task(len(seen) - lookups, alone, CHILDREN),
                0.0,
                f"experiment lookups: {lookups} for the parent and its {CHILDREN} children together",
            )
        )

        seen = counted(proxy, by_id, rank_one)
        rows.append(("non-zero rank (rank=1)", len(seen), plain_top, endpoints(seen)))

    print()
    print("(a) requests per task, counted at the server (tasks log nothing)")
    print(f"{'task':<52} {'tracked':>8} {'untracked':>10}  requests")
    for label, tracked, untracked, detail in rows:
        print(f"{label:<52} {tracked:>8.1f} {untracked:>10.1f}  {detail}")


if __name__ == "__main__":
    main()
