"""Nothing at import: the plugin loads no MLflow and changes nothing until a tracked call starts,
and puts MLflow's objects back, exactly, after the last one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_plugin_imports_no_mlflow_and_starts_nothing() -> None:
    """In a fresh process the import leaves MLflow unimported, no thread started and SIGTERM as it was."""
    seen = _run(
        "import json, signal, sys, threading\n"
        "import flyte\n"
        "flytes = sorted(t.name for t in threading.enumerate())\n"
        "import flyteplugins.mlflow\n"
        "print(json.dumps({'mlflow': sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'),"
        " 'threads': sorted(t.name for t in threading.enumerate()) == flytes,"
        " 'sigterm': signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,"
        " 'engine': 'flyteplugins.mlflow._engine' in sys.modules}))"
    )
    assert seen == {"mlflow": [], "threads": True, "sigterm": True, "engine": False}


def test_a_module_with_an_untracked_task_runs_it_without_mlflow() -> None:
    """Running an untracked task of a module that imports the plugin never loads MLflow or the engine."""
    seen = _run(
        "import json, sys\n"
        "import flyte\n"
        "from flyteplugins.mlflow import get_mlflow_run, mlflow_config\n"
        "env = flyte.TaskEnvironment(name='import-untracked')\n"
        "@env.task\n"
        "def plain(x: int) -> int:\n"
        "    assert get_mlflow_run() is None\n"
        "    return x * 2\n"
        "flyte.init()\n"
        "config = mlflow_config(run_mode='new')\n"
        "out = flyte.with_runcontext(mode='local', custom_context=config).run(plain, x=3)\n"
        "print(json.dumps({'out': out.outputs()[0], 'mlflow': 'mlflow' in sys.modules,"
        " 'engine': 'flyteplugins.mlflow._engine' in sys.modules}))"
    )
    assert seen == {"out": 6, "mlflow": False, "engine": False}


def test_mlflows_objects_are_back_exactly_after_the_last_tracked_call(tracking_uri: str) -> None:
    """A tracked task swaps MLflow's run stack, per-call state and provenance registry while it runs;
    afterwards every object MLflow had is back (the same objects), and the tracking URI is as it was."""
    seen = _run(
        "import json, os, mlflow, flyte\n"
        "from mlflow.tracking import fluent\n"
        "from mlflow.tracking.context import registry\n"
        "from mlflow.utils.autologging_utils import safety\n"
        "from flyteplugins.mlflow import mlflow_run\n"
        "def objects():\n"
        "    return [id(fluent._active_run_stack), id(fluent._last_logged_model_id),\n"
        "            id(fluent._ACTIVE_MODEL_CONTEXT), id(safety._AutologgingSessionManager),\n"
        "            [id(p) for p in registry._run_context_provider_registry],\n"
        "            os.environ.get('MLFLOW_TRACKING_URI')]\n"
        "before = objects()\n"
        "env = flyte.TaskEnvironment(name='import-restore')\n"
        "@mlflow_run\n"
        "@env.task\n"
        "def tracked() -> list:\n"
        "    return [objects() != before, type(fluent._active_run_stack).__name__]\n"
        "flyte.init()\n"
        "inside = flyte.with_runcontext(mode='local').run(tracked).outputs()[0]\n"
        "print(json.dumps({'inside': inside, 'after': objects() == before}))",
        MLFLOW_TRACKING_URI=tracking_uri,
    )
    assert seen == {"inside": [True, "ContextLocalRunStack"], "after": True}
