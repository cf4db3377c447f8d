"""``make ui``: serve the MLflow UI on the demo's store and print the address of the demo's runs.

The store is the SQLite file that ``make demo`` tracks into (``.demo/mlflow.db``, or the directory in
``FLYTE_MLFLOW_DEMO_DIR``). The address opens the quickstart's experiment in MLflow's model-training
view: MLflow 3 opens an experiment in its GenAI view unless the URL says
``workflowType=machine_learning``. The UI listens on 127.0.0.1, port 5000 or ``FLYTE_MLFLOW_UI_PORT``,
until it is stopped with Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `examples.quickstart`
from examples.quickstart import DIR_ENV, EXPERIMENT, demo_store

PORT_ENV = "FLYTE_MLFLOW_UI_PORT"


def experiment_url(host: str, experiment_id: str) -> str:
    """The MLflow UI's run list of an experiment, in the model-training view."""
    return f"{host}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main() -> int:
    """Serve the UI until interrupted; return the exit status."""
    store = demo_store()
    uri = f"sqlite:///{store}"
    found = MlflowClient(uri).get_experiment_by_name(EXPERIMENT) if store.exists() else None
    if found is None:
        print(f"No demo runs in {store}: run `make demo` first (or set {DIR_ENV}).", file=sys.stderr)
        return 2
    port = os.environ.get(PORT_ENV) or "5000"
    host = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", port]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([*command, "--workers", "1"], env=env, stdout=sys.stderr)  # stdout: the address
    try:
        while server.poll() is None:
            try:
                if requests.get(host + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            return server.returncode or 1
        print(f"MLflow UI for {uri}:\n  {experiment_url(host, found.experiment_id)}", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
