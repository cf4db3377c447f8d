"""Scenario (e): the time from SIGTERM to exit of a pod's process blocked in native code.

Each case is one pod, emulated as the tests emulate it (``tests/helpers/pods.py``: Flyte's task
runner in a subprocess): a task that waits in gloo's rendezvous for a peer that never comes, so its
main thread is in native code and never returns to Python. The benchmark sends SIGTERM once the wait
has begun and times the exit, five times per case, side by side with the same task in a module that
never imports the plugin. A tracked process marks its run ``KILLED`` within that time; the bound is
the plugin's ``KILL_DEADLINE``.

Run: ``python -m bench.sigterm`` (or ``make bench`` for every scenario).
"""

from __future__ import annotations

import json
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from bench._support import free_port, scenario_server, unique
from flyteplugins.mlflow import mlflow_config
from flyteplugins.mlflow._runs.sigterm import KILL_DEADLINE
from tests.helpers.pods import REMOTE_CHILD, Action, make_inputs, wait_blocked

REPEAT = 5
PLAIN_CHILD = "tests.helpers.plain_child"  # the same blocking task in a module without the plugin
# label: (module, task, extra environment)
CASES = {
    "without the plugin": (PLAIN_CHILD, "blocks_in_gloo", {}),
    "tracked, main thread in gloo": (REMOTE_CHILD, "blocks_in_gloo", {}),
    "tracked sync task, worker thread in gloo": (REMOTE_CHILD, "blocks_in_gloo_sync", {}),
    "untracked task, plugin imported": (REMOTE_CHILD, "untracked_blocks_in_gloo", {}),
    "rank 1 (owns no run)": (REMOTE_CHILD, "blocks_in_gloo", {"RANK": "1"}),
}


def once(workdir: Path, context: dict[str, str], case: str, client: MlflowClient) -> tuple[float, int, str]:
    """One pod of ``case``: SIGTERM it in its native wait; return (seconds to exit, exit code, run status)."""
    module, task, extra = CASES[case]
    rank = int(extra.get("RANK", "0"))
    inputs = make_inputs(task, context, module=module, port=free_port(), rank=rank)
    proc = Action(workdir, task, inputs, module=module).start(0, extra)
    state = json.loads(wait_blocked(proc, workdir))
    time.sleep(1.0)
    guard = threading.Timer(60, proc.kill)  # a blocking wait is timed exactly; this ends a stuck one
    guard.start()
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    took = time.perf_counter() - sent
    guard.cancel()
    status = client.get_run(state["run"]).info.status if state["run"] != "-" else "-"
    return took, code, status


def main() -> None:
    """Print the time from SIGTERM to exit for each case."""
    with scenario_server("time from SIGTERM to exit, blocked in native code") as server:
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment(unique("sigterm"))
        context = dict(mlflow_config(tracking_uri=server.uri, experiment_id=experiment_id))
        rows = []
        for case in CASES:
            results = []
            for _ in range(REPEAT):
                with tempfile.TemporaryDirectory() as tmp:
                    results.append(once(Path(tmp), context, case, client))
            rows.append((case, results))

    print()
    print(f"(e) SIGTERM to a pod's process waiting in gloo (native code), {REPEAT} runs each")
    print(f"{'case':<42} {'median':>8} {'range':>17} {'exit':>5} {'run after':>10}")
    for case, results in rows:
        times = [t for t, _, _ in results]
        codes = {c for _, c, _ in results}
        statuses = {s for _, _, s in results}
        print(
            f"{case:<42} {statistics.median(times) * 1000:>6.0f}ms "
            f"{min(times) * 1000:>6.0f}-{max(times) * 1000:.0f}ms {','.join(map(str, codes)):>5} "
            f"{','.join(statuses):>10}"
        )
    worst = max(t for _, results in rows for t, _, _ in results)
    all_died = all(c == -signal.SIGTERM for _, results in rows for _, c, _ in results)
    verdict = "holds" if all_died and worst <= KILL_DEADLINE else "MISSED"
    print(f"target: every process dies of SIGTERM within KILL_DEADLINE ({KILL_DEADLINE:g}s): {verdict}")


if __name__ == "__main__":
    main()
