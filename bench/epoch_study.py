"""The study of scenario (f), and a command that times it: what ``bench.epoch_logging`` runs.

Nested trials under ``asyncio.gather``, each running ``epochs`` epochs of ``await asyncio.sleep(0.05)``
(training that yields the event loop) and one ``mlflow.log_metrics`` call of 3 metrics per epoch.
Four ways to run the same trials:

* ``plain_study``: untracked, no MLflow calls;
* ``floor_study``: tracked by hand with the fewest requests any tracker needs, from a bare client
  (``http.client`` and ``json`` on 8 threads, as many as the plugin's pool): per run one
  ``runs/create`` and one ``runs/update`` for its status, per trial one ``runs/log-batch`` with all
  its points when it ends, and one ``runs/search`` at the end for the root's sweep. No plugin, no
  MLflow client. What it costs over ``plain_study`` is, near enough, the server's share, which a
  tracker that stores every point and every status cannot avoid;
* ``study`` with the plugin, synchronous or ``async_logging=True`` (set in ``custom_context``).

This module uses only the plugin's documented API, so the command below also runs against an older
checkout of the package: ``epoch_logging`` times the code of main before issue 11 that way, on
``PYTHONPATH``, side by side with today's.

Run: ``python -m bench.epoch_study --tracking-uri URI --experiment-id ID --trials 16 --epochs 20
--repeat 5 [--async-logging] [--warm-up-uri PROXY]``. It prints one JSON line: the wall time and the
run ids of each repetition, after a warm-up run that is not timed (sent to ``--warm-up-uri`` if
given, so a proxy can count its requests).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import urlsplit

import flyte
import mlflow

from flyteplugins.mlflow import MlflowConfig, get_mlflow_run, mlflow_config, mlflow_run

__all__ = ["EPOCH", "KEYS", "floor_study", "local", "plain_study", "study", "value"]

env = flyte.TaskEnvironment(name="bench-epoch-logging")

KEYS: Final = ("loss", "accuracy", "lr")
EPOCH: Final = 0.05


def value(trial: int, epoch: int, k: int) -> float:
    """The value trial ``trial`` logs for its ``k``-th key at ``epoch``: unique across the study."""
    return trial * 1_000_000 + epoch * 10 + k


async def train(i: int, epochs: int, log: bool) -> None:
    """The trial body: ``epochs`` epochs of sleep, and one ``log_metrics`` call per epoch if ``log``."""
    for epoch in range(epochs):
        await asyncio.sleep(EPOCH)
        if log:
            mlflow.log_metrics({key: value(i, epoch, k) for k, key in enumerate(KEYS)}, step=epoch)


@env.task
async def plain_trial(i: int, epochs: int) -> str:
    await train(i, epochs, log=False)
    return ""


@env.task
async def plain_study(n: int, epochs: int) -> list[str]:
    return list(await asyncio.gather(*(plain_trial(i, epochs) for i in range(n))))


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int, epochs: int) -> str:
    mlflow.set_tag("bench.trial", str(i))
    await train(i, epochs, log=True)
    run = get_mlflow_run()
    assert run is not None
    return str(run.info.run_id)


@mlflow_run
@env.task
async def study(n: int, epochs: int) -> list[str]:
    run = get_mlflow_run()
    assert run is not None
    ids = await asyncio.gather(*(trial(i, epochs) for i in range(n)))
    return [str(run.info.run_id), *ids]


# --- the floor: the same study tracked by hand, with the fewest requests and the cheapest client


def _post(uri: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One POST to the MLflow REST API on a fresh connection (the server's sync workers close each)."""
    parts = urlsplit(uri)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request(
            "POST", "/api/2.0/mlflow/" + path, json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        data = reply.read()
    finally:
        conn.close()
    if reply.status != 200:
        msg = f"{path}: HTTP {reply.status}: {data[:300]!r}"
        raise RuntimeError(msg)
    answer: dict[str, Any] = json.loads(data)
    return answer


_POOL: Final = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-floor")  # as many as the plugin's


async def _request(uri: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.get_running_loop().run_in_executor(_POOL, _post, uri, path, body)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _create(uri: str, experiment_id: str, tags: dict[str, str]) -> str:
    body = {
        "experiment_id": experiment_id,
        "start_time": _now_ms(),
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    run_id: str = (await _request(uri, "runs/create", body))["run"]["info"]["run_id"]
    return run_id


async def _finish(uri: str, run_id: str) -> None:
    await _request(uri, "runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": _now_ms()})


@env.task
async def floor_trial(i: int, epochs: int, uri: str, experiment_id: str, parent: str) -> str:
    run_id = await _create(uri, experiment_id, {"mlflow.parentRunId": parent, "bench.trial": str(i)})
    points = []
    for epoch in range(epochs):
        await asyncio.sleep(EPOCH)
        stamp = _now_ms()
        points += [
            {"key": key, "value": value(i, epoch, k), "timestamp": stamp, "step": epoch}
            for k, key in enumerate(KEYS)
        ]
    await _request(uri, "runs/log-batch", {"run_id": run_id, "metrics": points})
    await _finish(uri, run_id)
    return run_id


@env.task
async def floor_study(n: int, epochs: int, uri: str, experiment_id: str) -> list[str]:
    root = await _create(uri, experiment_id, {})
    ids = await asyncio.gather(*(floor_trial(i, epochs, uri, experiment_id, root) for i in range(n)))
    await _finish(uri, root)
    sweep = f"tags.`bench.root` = '{root}' and attributes.status = 'RUNNING'"
    await _request(
        uri, "runs/search", {"experiment_ids": [experiment_id], "filter": sweep, "max_results": 1000}
    )
    return [root, *ids]


def local(config: MlflowConfig, task: Any, **inputs: object) -> Callable[[], list[str]]:
    """A callable that runs a study task once in Flyte's local mode and returns its run ids."""

    def go() -> list[str]:
        result: list[str] = (
            flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs).outputs()[0]
        )
        return result

    return go


def main() -> None:
    """Time the plugin's study with the code on ``sys.path``; print the walls and run ids as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--repeat", type=int, required=True)
    parser.add_argument("--async-logging", action="store_true")
    parser.add_argument(
        "--warm-up-uri", help="where the warm-up run sends (a counting proxy); default: --tracking-uri"
    )
    args = parser.parse_args()
    flyte.init()
    timed, warm_up = (
        mlflow_config(tracking_uri=uri, experiment_id=args.experiment_id, async_logging=args.async_logging)
        for uri in (args.tracking_uri, args.warm_up_uri or args.tracking_uri)
    )
    local(warm_up, study, n=args.trials, epochs=args.epochs)()
    go = local(timed, study, n=args.trials, epochs=args.epochs)
    walls, ids = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        ids.append(go())
        walls.append(time.perf_counter() - started)
    print(json.dumps({"walls": walls, "ids": ids}))


if __name__ == "__main__":
    main()
