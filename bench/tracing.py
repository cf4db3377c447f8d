"""Scenario (i): what ``tracing=True`` costs per task, against the same study untraced and against bare
``mlflow.start_span`` calls making the same spans without the plugin's tracing.

The study is a tracked parent that gathers :data:`TOOLS` tool tasks, each calling :data:`STEPS`
``flyte.trace`` steps: ``1 + TOOLS`` tasks and ``1 + TOOLS * (1 + STEPS)`` spans when traced. The
bare variant runs the same tasks with tracing off, and opens one ``mlflow.start_span`` around each
task body and each step itself: the same span tree, started by the user's code. Wall time is the
median of whole local runs divided by the number of tasks; spans are exported in the background, so
they are flushed before the requests are counted at the server.

Run: ``python -m bench.tracing`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Iterator

import flyte
import mlflow
from mlflow.tracking import MlflowClient

from bench._support import Proxy, median_seconds, scenario_server, unique
from flyteplugins.mlflow import MlflowConfig, mlflow_config, mlflow_run

env = flyte.TaskEnvironment(name="bench-tracing")

TOOLS = 4
STEPS = 2
REPEAT = 5
TASKS = 1 + TOOLS
SPANS = 1 + TOOLS * (1 + STEPS)


def _bare(name: str, bare: bool) -> contextlib.AbstractContextManager[object]:
    """A user span called ``name`` in the bare variant, else nothing."""
    return mlflow.start_span(name=name) if bare else contextlib.nullcontext()


@flyte.trace
async def call_model(prompt: str) -> str:
    return prompt.upper()


@env.task
async def tool(i: int, bare: bool) -> int:
    with _bare("tool", bare):
        for step in range(STEPS):
            with _bare("call_model", bare):
                await call_model(f"tool {i} step {step}")
    return i


@mlflow_run
@env.task
async def study(n: int, bare: bool) -> int:
    with _bare("study", bare):
        done = await asyncio.gather(*(tool(i, bare) for i in range(n)))
    return len(done)


@contextlib.contextmanager
def _spans_to(uri: str, experiment_id: str) -> Iterator[None]:
    """Where bare spans go when no traced task chose it: the server, in the bench's experiment."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def run_once(config: MlflowConfig, bare: bool) -> None:
    flyte.with_runcontext(mode="local", custom_context=config).run(study, n=TOOLS, bare=bare)


def counted(proxy: Proxy, config: MlflowConfig, bare: bool) -> list[tuple[str, str]]:
    """The requests of one run, with its spans flushed to the server."""
    mark = proxy.mark()
    run_once(config, bare)
    mlflow.flush_trace_async_logging()
    return proxy.requests(mark)


def endpoints(seen: list[tuple[str, str]]) -> str:
    """``1 x POST /v1/traces`` style summary of the trace requests in a request list."""
    counts = Counter(f"{method} {path}" for method, path in seen if "traces" in path)
    return ", ".join(f"{n} x {path}" for path, n in sorted(counts.items())) or "none"


def main() -> None:
    """Print the wall time per task and the requests per run of each variant."""
    flyte.init()
    with scenario_server("tracing: traced vs untraced vs bare spans") as server, Proxy(server.uri) as proxy:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("tracing"))
        untraced = mlflow_config(tracking_uri=proxy.uri, experiment_id=experiment_id)
        traced = mlflow_config(tracking_uri=proxy.uri, experiment_id=experiment_id, tracing=True)
        variants = (("untraced", untraced, False), ("traced (tracing=True)", traced, False))
        rows: list[tuple[str, float, int, int, str]] = []
        with _spans_to(proxy.uri, experiment_id):
            for label, config, bare in (*variants, ("bare mlflow.start_span", untraced, True)):
                run_once(config, bare)  # warm: MLflow's tracing loads with the first span
                seconds = median_seconds(functools.partial(run_once, config, bare), REPEAT)
                mlflow.flush_trace_async_logging()
                seen = counted(proxy, config, bare)
                trace_requests = sum(1 for _, path in seen if "traces" in path)
                rows.append((label, seconds / TASKS, len(seen), trace_requests, endpoints(seen)))
        traces = client.search_traces(locations=[experiment_id], max_results=100)
        spans = sorted({len(client.get_trace(t.info.trace_id).data.spans) for t in traces})

    print()
    print(f"(i) tracing: a study of {TASKS} tasks ({TOOLS} parallel tools, {STEPS} flyte.trace steps each)")
    print(f"    spans per trace stored: {spans} (expected {SPANS}); median of {REPEAT} runs")
    print(f"{'variant':<26} {'ms/task':>8} {'requests/run':>13} {'of them traces':>15}  trace requests")
    for label, per_task, requests, trace_requests, detail in rows:
        print(f"{label:<26} {per_task * 1000:>8.1f} {requests:>13} {trace_requests:>15}  {detail}")


if __name__ == "__main__":
    main()
