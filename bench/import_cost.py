"""(h) What the plugin costs a process before it tracks anything: import time and memory.

Each case runs in a fresh interpreter, several times, and reports the median wall time of the work
(from interpreter start, measured inside the process) and the process's peak RSS:

* ``import flyte``: the floor;
* ``import flyteplugins.mlflow``;
* an untracked task run in local mode, in a module that imports only Flyte;
* the same task in a module that also imports the plugin (and decorates another task with it).

Run alone: ``python -m bench.import_cost`` (it needs no tracking server; the options of ``run_all``
are accepted and ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEAT = 5

_MEASURE = """
import json, resource, sys, time
started = time.perf_counter()
{body}
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mlflow": "mlflow" in sys.modules}}))
"""

_TASK = """
import flyte
{plugin}
env = flyte.TaskEnvironment(name="import-cost")

@env.task
def untracked(x: int) -> int:
    return x + 1
{tracked}
flyte.init()
assert flyte.with_runcontext(mode="local").run(untracked, x=1).outputs()[0] == 2
"""

CASES = {
    "import flyte": "import flyte",
    "import flyteplugins.mlflow": "import flyteplugins.mlflow",
    "untracked task, Flyte only": _TASK.format(plugin="", tracked=""),
    "untracked task, plugin imported": _TASK.format(
        plugin="from flyteplugins.mlflow import mlflow_run",
        tracked="\n@mlflow_run\n@env.task\ndef tracked(x: int) -> int:\n    return x\n",
    ),
}


def _once(body: str, workdir: Path) -> dict[str, float | bool]:
    script = workdir / "case.py"
    script.write_text(_MEASURE.format(body=body))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, check=True, timeout=300
    )
    result: dict[str, float | bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Measure every case and print one line each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri")
    parser.add_argument("--db")
    parser.add_argument("--pgid")
    parser.parse_args()
    print(f"(h) import cost: median of {REPEAT} fresh interpreters per case")
    with tempfile.TemporaryDirectory(prefix="flyteplugins-mlflow-import-") as tmp:
        workdir = Path(tmp)
        for name, body in CASES.items():
            runs = [_once(body, workdir) for _ in range(REPEAT)]
            seconds = statistics.median(float(r["seconds"]) for r in runs)
            rss = statistics.median(float(r["rss_mb"]) for r in runs)
            mlflow = any(bool(r["mlflow"]) for r in runs)
            print(f"  {name:<34} {seconds:6.2f} s  {rss:6.0f} MB RSS  mlflow imported: {mlflow}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
