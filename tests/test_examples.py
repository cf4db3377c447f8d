"""The examples run end to end: against the session server through their ``main()``, and as scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.autologging_utils import autologging_is_disabled

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the editable install already puts it there; a plain install may not
    sys.path.insert(0, str(REPO))

from examples import hpo, quickstart, sklearn_autolog, with_secrets  # noqa: E402
from tests.helpers.support import ArtifactServer, AuthServer, Team  # noqa: E402

PARENT_TAG = "mlflow.parentRunId"
RUN_ID = r"[0-9a-f]{32}"
MODEL_ID = r"m-[0-9a-f]{32}"


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FLYTE_MLFLOW_DEMO_"))}
    env.update(extra)
    return env


def _run_script(name: str, *args: str, cwd: Path, **extra_env: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        cwd=cwd,
        env=_script_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def _children(client: MlflowClient, run: Run) -> list[Run]:
    found: list[Run] = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'", max_results=1000
    )
    return found


def test_quickstart_parent_shared_new_and_nested(
    tracking_uri: str, client: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The quickstart's shared child logs into the parent's run, its nested folds sit under it, and the
    new child is a separate top-level run."""
    runs = quickstart.main(tracking_uri, n_folds=3)

    parent = client.get_run(runs.parent)
    assert runs.shared == runs.parent
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == quickstart.EXPERIMENT
    assert PARENT_TAG not in parent.data.tags
    assert parent.data.tags["example"] == "quickstart"
    assert parent.data.params == {"n_folds": "3", "n_rows": "1000", "link_host": tracking_uri}
    assert parent.data.metrics == {"rows_loaded": 1000.0, "folds": 3.0}

    assert len(set(runs.nested)) == 3
    assert {r.info.run_id for r in _children(client, parent)} == set(runs.nested)
    for fold, run_id in enumerate(runs.nested):
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED"
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.params == {"fold": str(fold), "learning_rate": str((fold + 1) / 10)}
        assert len(client.get_metric_history(run_id, "loss")) == 5

    new = client.get_run(runs.new)
    assert runs.new not in (runs.parent, *runs.nested)
    assert new.info.status == "FINISHED"
    assert PARENT_TAG not in new.data.tags
    assert new.data.tags["role"] == "baseline"
    assert new.data.params == {"model": "predict-the-mean"}

    out = capsys.readouterr().out
    for run_id in (runs.parent, runs.new, *runs.nested):
        assert run_id in out
    assert f"{tracking_uri}/#/experiments/{parent.info.experiment_id}/runs/{runs.parent}" in out
    assert "mlflow ui" not in out  # a server needs no UI command


def test_hpo_trials_each_log_into_their_own_nested_run(tracking_uri: str, client: MlflowClient) -> None:
    """Every parallel trial's params and score land in its own run under the study, and the study run
    records the best trial."""
    study = hpo.main(tracking_uri, n_trials=12, seed=3)

    parent = client.get_run(study.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["example"] == "hpo"
    assert "rmse" not in parent.data.metrics  # no trial logged into the study's run

    trials = {t.run_id: t for t in study.trials}
    assert len(trials) == 12
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert {r.info.run_id for r in _children(client, parent)} == set(trials)
    for run_id, t in trials.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {  # the trial's inputs, recorded by log_inputs=True
            "number": str(t.number),
            "max_depth": str(t.max_depth),
            "min_samples_leaf": str(t.min_samples_leaf),
        }
        history = client.get_metric_history(run_id, "rmse")
        assert [m.value for m in history] == [pytest.approx(t.rmse)]

    best = min(study.trials, key=lambda t: t.rmse)
    assert study.best.run_id == best.run_id
    assert parent.data.metrics == {"best_rmse": pytest.approx(best.rmse)}
    assert parent.data.params["best_trial"] == str(best.number)
    assert parent.data.params["best_max_depth"] == str(best.max_depth)
    assert parent.data.params["best_min_samples_leaf"] == str(best.min_samples_leaf)
    assert parent.data.params["n_trials"] == "12"
    assert parent.data.params["seed"] == "3"
    assert parent.data.tags["best_run_id"] == best.run_id


def test_sklearn_autolog_records_params_and_metrics(tracking_uri: str, client: MlflowClient) -> None:
    """Fitting in the autologged task records the estimator's params and metrics, and autologging is off
    again afterwards."""
    fitted = sklearn_autolog.main(tracking_uri, n_estimators=7, max_depth=3)

    run = client.get_run(fitted.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == sklearn_autolog.EXPERIMENT
    assert run.data.params["n_estimators"] == "7"
    assert run.data.params["max_depth"] == "3"
    assert run.data.params["random_state"] == "0"
    assert run.data.tags["estimator_name"] == "RandomForestRegressor"
    metrics = run.data.metrics
    assert {"training_r2_score", "training_mean_squared_error", "training_score"} <= set(metrics)
    assert 0.0 < metrics["training_r2_score"] <= 1.0
    assert metrics["RandomForestRegressor_score_x_test"] == pytest.approx(fitted.test_r2)
    assert autologging_is_disabled("sklearn")


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_quickstart_script_defaults_to_an_embedded_sqlite_store(tmp_path: Path) -> None:
    """Run as a script with no URI, the quickstart tracks into an SQLite file and prints the ``mlflow ui``
    command that shows it."""
    repo_store = REPO / ".demo" / "mlflow.db"
    before = repo_store.stat().st_mtime_ns if repo_store.exists() else None
    demo_dir = tmp_path / "demo"

    out = _run_script("quickstart.py", cwd=tmp_path, FLYTE_MLFLOW_DEMO_DIR=str(demo_dir))

    uri = f"sqlite:///{demo_dir.resolve() / 'mlflow.db'}"
    assert re.search(rf"\S*mlflow ui --backend-store-uri {re.escape(uri)}$", out, re.MULTILINE), out
    ids: list[tuple[str, str]] = re.findall(
        rf"^\s+(parent|shared|new|nested)\s.*?({RUN_ID})", out, re.MULTILINE
    )
    roles = [role for role, _ in ids]
    assert roles.count("parent") == roles.count("shared") == roles.count("new") == 1
    assert roles.count("nested") == 3

    client = MlflowClient(uri)
    by_role: dict[str, list[str]] = {}
    for role, run_id in ids:
        by_role.setdefault(role, []).append(run_id)
    (parent_id,) = by_role["parent"]
    assert by_role["shared"] == [parent_id]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert PARENT_TAG not in client.get_run(by_role["new"][0]).data.tags
    assert len(set(by_role["nested"])) == 3
    for run_id in by_role["nested"]:
        assert client.get_run(run_id).data.tags[PARENT_TAG] == parent_id
    assert (repo_store.stat().st_mtime_ns if repo_store.exists() else None) == before


@pytest.mark.parametrize(
    ("script", "expected_runs"), [("hpo.py", 17), ("sklearn_autolog.py", 1), ("distributed.py", 1)]
)
def test_example_script_takes_the_tracking_uri_as_argument(
    script: str, expected_runs: int, tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    """``python examples/<script> URI`` tracks into the server at ``URI`` and prints finished runs."""
    out = _run_script(script, tracking_uri, cwd=tmp_path)

    assert tracking_uri in out
    assert "mlflow ui" not in out
    run_ids = set(re.findall(RUN_ID, out))
    assert len(run_ids) == expected_runs
    for run_id in run_ids:
        assert client.get_run(run_id).info.status == "FINISHED"


def test_secrets_example_logs_in_with_the_variables_its_secrets_become(
    auth_server: AuthServer, team: Team, admin: MlflowClient, tmp_path: Path
) -> None:
    """``examples/with_secrets.py`` mounts its two secrets as MLflow's credential variables. With those
    variables set, as a pod gets them, it tracks a parent and three nested trials on the basic-auth
    server; without them, it stops at once with the server's 401 and the variables to set."""
    mounted = {s.as_env_var for s in with_secrets.env.secrets}  # type: ignore[union-attr]
    assert mounted == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}

    logged_in = {"MLFLOW_TRACKING_USERNAME": team.user, "MLFLOW_TRACKING_PASSWORD": team.password}
    out = _run_script("with_secrets.py", auth_server.uri, team.editable, cwd=tmp_path, **logged_in)
    (parent_id,) = re.findall(rf"Tracked run ({RUN_ID})", out)
    runs = admin.search_runs([team.editable])
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(runs) == 4
    trials = [r for r in runs if r.info.run_id != parent_id]
    assert {r.data.tags[PARENT_TAG] for r in trials} == {parent_id}
    assert len(admin.get_metric_history(parent_id, "loss")) == 5

    refused = subprocess.run(
        [sys.executable, str(REPO / "examples" / "with_secrets.py"), auth_server.uri, team.editable],
        cwd=tmp_path,
        env=_script_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert refused.returncode != 0
    printed = " ".join((refused.stdout + refused.stderr).split())  # Flyte's console wraps long lines
    assert "HTTP 401" in printed
    assert "No credentials were sent: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in printed


def test_register_best_registers_the_best_trials_model_and_the_downstream_task_loads_it(
    artifact_server: ArtifactServer, tmp_path: Path
) -> None:
    """``examples/register_best.py URI NAME`` against a server with ``--serve-artifacts``: every parallel
    trial's ``last_logged_model()`` is the model logged in its own run, the alias ``champion`` points at
    a version made from the lowest-RMSE trial's model, and the downstream task loaded that version."""
    name = f"register-best-{uuid.uuid4().hex[:8]}"
    out = _run_script("register_best.py", artifact_server.uri, name, cwd=tmp_path)
    client = MlflowClient(artifact_server.uri)

    (study_id,) = re.findall(rf"^Study run ({RUN_ID})", out, re.MULTILINE)
    trials = [
        (float(rmse), model_id)
        for rmse, model_id in re.findall(rf"^\s+rmse=\s*([0-9.]+)\s+model ({MODEL_ID})", out, re.MULTILINE)
    ]
    assert len(trials) == 8, out
    ((version, registered_from),) = re.findall(
        rf"^Registered '{re.escape(name)}' version (\d+) from ({MODEL_ID}) as 'champion'$", out, re.MULTILINE
    )
    ((downstream_id, loaded_version, loaded_model, downstream_rmse),) = re.findall(
        rf"^Downstream run ({RUN_ID}) loaded models:/{re.escape(name)}@champion "
        rf"\(version (\d+), model ({MODEL_ID})\): rmse=([0-9.]+) on 111 rows$",
        out,
        re.MULTILINE,
    )

    study = client.get_run(study_id)
    trial_runs = {r.info.run_id: r for r in _children(client, study)}
    assert len(trial_runs) == 8
    # Each trial's model, as last_logged_model() gave it, was logged in that trial's own run.
    sources = {client.get_logged_model(model_id).source_run_id: rmse for rmse, model_id in trials}
    assert set(sources) == set(trial_runs), "a trial read back another trial's model"
    for run_id, rmse in sources.items():
        assert trial_runs[run_id].data.metrics["rmse"] == pytest.approx(rmse, abs=1e-3)
        assert trial_runs[run_id].info.status == "FINISHED"

    best_rmse, best_model = min(trials)
    assert registered_from == best_model
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == version == loaded_version
    assert champion.source == f"models:/{best_model}"
    assert champion.run_id == client.get_logged_model(best_model).source_run_id
    # The champion leads back to Flyte: its logged model carries the trial's Flyte provenance.
    provenance = client.get_logged_model(best_model).tags
    assert provenance["flyte.action_name"] == trial_runs[champion.run_id].data.tags["flyte.action_name"]
    assert provenance["flyte.run_name"] == study.data.tags["flyte.run_name"]
    assert study.data.tags["best_model_id"] == best_model

    downstream = client.get_run(downstream_id)
    assert downstream.info.status == "FINISHED"
    assert loaded_model == best_model
    assert float(downstream_rmse) == pytest.approx(best_rmse, abs=1e-3)
    assert downstream.data.metrics["champion_rmse"] == pytest.approx(best_rmse, abs=1e-3)
    assert downstream.data.params["model_uri"] == f"models:/{name}@champion"

    # The model files went through the server: they are in its artifact store, under the model's id.
    experiment = client.get_experiment(study.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert list(artifact_server.served.rglob(f"{best_model}/artifacts/MLmodel")), "model not served"
