"""``make ui`` (``examples/ui.py``): the MLflow UI on the demo's store, at an address that opens its runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser

from tests.helpers.support import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "examples" / "ui.py")
EXPERIMENT = "flyte-quickstart"


def _env(demo_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(FLYTE_MLFLOW_DEMO_DIR=str(demo_dir), FLYTE_MLFLOW_UI_PORT=str(port))
    return env


def test_without_demo_runs_it_says_to_run_the_demo(tmp_path: Path) -> None:
    """With no demo store it starts nothing and says to run ``make demo`` first."""
    done = subprocess.run(
        [sys.executable, SCRIPT], env=_env(tmp_path, free_port()), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "make demo" in done.stderr


def test_ui_serves_the_demo_store_and_prints_its_address(tmp_path: Path, browser: Browser) -> None:
    """It prints the quickstart experiment's address with workflowType=machine_learning, which opens the
    run list (not the GenAI view) showing the demo's run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name="pipeline")
    client.set_terminated(run.info.run_id)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, SCRIPT],
        env=_env(tmp_path, port),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        expected = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        assert lines == [f"MLflow UI for {uri}:\n", f"  {expected}\n"]
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(expected)
        page.locator(f"a[href*='/runs/{run.info.run_id}']").first.wait_for(timeout=60_000)
        assert page.get_by_text("1 matching run").count() == 1
        page.close()
    finally:
        process.send_signal(signal.SIGINT)  # the script stops the UI it started, then exits
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, 0)
            time.sleep(0.2)
            continue
        break
    else:
        raise AssertionError("the UI outlived the script")
