"""``log_inputs=True``: a task's inputs become its run's params and datasets, on a real tracking server.

The tasks are in ``tests.helpers.inputs_child``, so one of them also runs as a pod, through Flyte's
task runner, where its inputs arrive through Flyte's own conversion of the inputs file.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import flyte
import mlflow
import pydantic
import pytest
from flyte.io import DataFrame, Dir, File
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser

from flyteplugins.mlflow import MlflowConfig, MlflowTrackingError, OnTrackingError, mlflow_config, mlflow_run
from flyteplugins.mlflow._inputs.inputs import (
    LONG_VALUES_ARTIFACT,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_VALUE,
    inputs_of,
    looks_like_credential,
)
from tests.conftest import MlflowServer
from tests.helpers.inputs_child import Model, Optimizer, TrainConfig, every_type, logs_lr_again, study
from tests.helpers.pods import Action, make_inputs
from tests.helpers.support import Relay, own_run_id, screenshot

env = flyte.TaskEnvironment(name="inputs")

DATA = "s3://bucket/train.csv"
EVERY_TYPE: dict[str, Any] = {
    "lr": 0.1,
    "depth": 3,
    "use_bn": True,
    "name": "baseline",
    "optimizer": Optimizer.SGD,
    "started": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    "budget": datetime.timedelta(minutes=90),
    "config": TrainConfig(),
    "model": Model(),
    "extra": {"dropout": 0.25},
    "layers": [64, 32],
    "api_key": "sk-never-recorded",
    "data": File(path=DATA, hash="5d41402abc4b2a76b9719d911017c592"),
    "images": Dir(path="s3://bucket/images"),
    "table": DataFrame(uri="s3://bucket/table.parquet", format="parquet"),
}
EVERY_TYPE_PARAMS = {
    "lr": "0.1",
    "depth": "3",
    "use_bn": "True",
    "name": "baseline",
    "optimizer": "sgd",
    "started": "2024-05-01T12:00:00+00:00",
    "budget": "5400.0",
    "config.epochs": "3",
    "config.schedule.warmup": "100",
    "config.schedule.decay": "0.5",
    "model.depth": "4",
    "model.activation": "relu",
    "extra.dropout": "0.25",
    "layers": "[64, 32]",
    "note": "default kept",
}


def run_local(config: MlflowConfig, task: Any, /, **inputs: object) -> Any:
    """Run ``task`` in Flyte's local mode with ``config`` as its context; return its first output."""
    return flyte.with_runcontext(mode="local", custom_context=config).run(task, **inputs).outputs()[0]


def datasets(client: MlflowClient, run_id: str) -> dict[str, tuple[str, str, str]]:
    """The run's datasets: name to (source, digest, context)."""
    out = {}
    inputs = client.get_run(run_id).inputs
    for given in inputs.dataset_inputs if inputs is not None else []:
        context = {t.key: t.value for t in given.tags}.get("mlflow.data.context", "")
        out[given.dataset.name] = (json.loads(given.dataset.source)["uri"], given.dataset.digest, context)
    return out


def _assert_every_type(client: MlflowClient, run_id: str) -> None:
    assert client.get_run(run_id).data.params == EVERY_TYPE_PARAMS
    found = datasets(client, run_id)
    assert found["data"] == (DATA, "5d41402abc4b2a76b9719d911017c592", "input"), "Flyte's hash is the digest"
    assert {name: (uri, ctx) for name, (uri, _, ctx) in found.items()} == {
        "data": (DATA, "input"),
        "images": ("s3://bucket/images", "input"),
        "table": ("s3://bucket/table.parquet", "input"),
    }
    assert found["images"][1] == hashlib.sha256(b"s3://bucket/images").hexdigest()[:16], "no hash: the URI's"
    inputs = client.get_run(run_id).inputs
    assert inputs is not None
    by_name = {given.dataset.name: given.dataset for given in inputs.dataset_inputs}
    assert {d.source_type for d in by_name.values()} == {"s3"}
    assert json.loads(by_name["table"].profile or "") == {"flyte_type": "DataFrame", "format": "parquet"}
    assert json.loads(by_name["data"].profile or "") == {"flyte_type": "File"}


def test_every_type_becomes_params_and_datasets(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Scalars, an enum, a datetime, a duration, nested dataclasses, a pydantic model, a dict and a list
    become params, a default included; the credential-named input and field are left out; the File,
    Dir and DataFrame become datasets with context "input"."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    _assert_every_type(client, run_local(config, every_type, **EVERY_TYPE))


def test_in_a_pod_inputs_arrive_through_flytes_conversion(
    tmp_path: Path, mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """The same task run as a pod, from an inputs file Flyte wrote, records the same params and datasets."""
    context = dict(mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1]))
    # the module the test imports, so the enum and dataclasses are its own
    module = "tests.helpers.inputs_child"
    inputs = make_inputs("every_type", context, module, **EVERY_TYPE)
    action = Action(tmp_path, "every_type", inputs, module=module)
    proc = action.start(0)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0 and not action.failed(), out.decode(errors="replace")[-3000:]
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FINISHED"
    _assert_every_type(client, run.info.run_id)


def test_parallel_trials_each_record_only_their_own_inputs(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Eight trials gathered side by side: each nested run holds its own lr and depth and the data; the
    study's run holds the study's inputs only."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    lrs = [0.001 * (i + 1) for i in range(8)]
    ids = run_local(config, study, lrs=lrs, data=File(path=DATA))
    for i, (run_id, lr) in enumerate(zip(ids, lrs, strict=True)):
        assert client.get_run(run_id).data.params == {"lr": str(lr), "depth": str(i)}
        assert set(datasets(client, run_id)) == {"data"}
    (parent,) = {client.get_run(run_id).data.tags["mlflow.parentRunId"] for run_id in ids}
    assert client.get_run(parent).data.params == {"lrs": str(lrs)}


@mlflow_run(log_inputs=True)
@env.task
async def shares_its_callers_run(lr: float) -> str:
    return own_run_id()


@mlflow_run
@env.task
async def calls_a_sharing_child() -> list[str]:
    mlflow.log_param("lr", "the caller's")
    return [own_run_id(), await shares_its_callers_run(0.5)]


def test_a_task_sharing_its_callers_run_records_nothing(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """An ``auto`` task under a tracked caller logs into the caller's run, which takes each param
    once: its inputs are not recorded there (here they would even clash with the caller's ``lr``)."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    caller, child = run_local(config, calls_a_sharing_child)
    assert caller == child
    assert client.get_run(caller).data.params == {"lr": "the caller's"}


@mlflow_run(run_mode="new")
@env.task
async def plain_trial(lr: float, data: File) -> str:
    return own_run_id()


@pytest.mark.parametrize("where", ["tracker", "context"])
def test_the_setting_works_from_the_context_and_is_off_by_default(
    where: str, mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """``log_inputs=True`` in the context turns recording on for a tracker that does not set it; without
    it nothing is recorded."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    if where == "context":
        on = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=True)
        run_id = run_local(on, plain_trial, lr=0.5, data=File(path=DATA))
        assert client.get_run(run_id).data.params == {"lr": "0.5"}
        assert set(datasets(client, run_id)) == {"data"}
    else:
        run_id = run_local(config, plain_trial, lr=0.5, data=File(path=DATA))
        assert client.get_run(run_id).data.params == {}
        assert datasets(client, run_id) == {}


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("again", [0.1, 0.2])
def test_logging_an_input_again_behaves_as_in_mlflow(
    again: float, queued: bool, mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """The body logging a param an input already set: the same value is accepted; a different one is
    MLflow's own error, which fails the task and its run (with ``async_logging``, at the task's end)."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], async_logging=queued)
    if again == 0.1:
        run_id = run_local(config, logs_lr_again, lr=0.1, again=again)
        assert client.get_run(run_id).info.status == "FINISHED"
        assert client.get_run(run_id).data.params == {"lr": "0.1", "again": "0.1"}
        return
    with pytest.raises(Exception) as info:  # Flyte wraps the task's error in one of its own
        run_local(config, logs_lr_again, lr=0.1, again=again)
    assert "Changing param values is not allowed" in str(info.value)
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == "FAILED"
    assert run.data.params == {"lr": "0.1", "again": "0.2"}


# --- plain tracked functions: values Flyte would not take as a task's inputs ---------------------


@dataclasses.dataclass
class Deep:
    level2: dict[str, Any]


class Credentials(pydantic.BaseModel):
    user: str = "alice"
    password: pydantic.SecretStr = pydantic.SecretStr("never")


def test_values_without_a_faithful_text_and_secrets_are_skipped_with_one_debug_line_each(
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes, an arbitrary object, a ``flyte.Secret``, a ``SecretStr``, credential names at any level,
    a list too long or of non-scalars and values nested too deep are skipped, each with one debug log
    line naming it; tuples, ``None`` and a date are recorded."""

    @mlflow_run(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], run_mode="new", log_inputs=True)
    def tracked(
        blob: bytes,
        thing: object,
        secret: flyte.Secret,
        creds: Credentials,
        db: dict[str, str],
        hfToken: str,
        max_tokens: int,
        shape: tuple[int, int],
        many: list[int],
        mixed: list[object],
        deep: Deep,
        nothing: int | None,
        day: datetime.date,
    ) -> str:
        return own_run_id()

    with caplog.at_level(logging.DEBUG, logger="flyteplugins.mlflow"):
        run_id = tracked(
            b"\x00",
            object(),
            flyte.Secret(key="db-password"),
            Credentials(),
            {"host": "db.internal", "password": "never"},
            "hf_never",
            512,
            (3, 4),
            list(range(MAX_ITEMS + 1)),
            [1, object()],
            Deep({"a": {"b": {"c": 1}}}),
            None,
            datetime.date(2024, 5, 1),
        )
    assert client.get_run(run_id).data.params == {
        "creds.user": "alice",
        "db.host": "db.internal",
        "max_tokens": "512",
        "shape": "(3, 4)",
        "nothing": "None",
        "day": "2024-05-01",
    }
    skipped = [r.getMessage() for r in caplog.records if "is not recorded" in r.getMessage()]
    keys = ["blob", "thing", "secret", "creds.password", "db.password", "hfToken", "many", "mixed"]
    keys.append("deep.level2.a.b" if MAX_DEPTH == 4 else "deep")
    assert len(skipped) == len(keys)
    for key, line in zip(keys, skipped, strict=True):
        assert repr(key) in line
    assert not [line for line in caplog.messages if "never" in line], "a secret's value was logged"


def test_a_long_value_is_cut_with_a_marker_and_kept_whole_in_an_artifact(
    mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str], tmp_path: Path
) -> None:
    """A value longer than MLflow's param limit is stored cut to the limit, ending with a marker that
    names the artifact; the artifact holds the full value."""
    prompt = "".join(f"{i:05d} " for i in range(2000))  # 12,000 characters

    @mlflow_run(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=True)
    def tracked(prompt: str, short: str) -> str:
        return own_run_id()

    run_id = tracked(prompt, "fits")
    params = client.get_run(run_id).data.params
    assert params["short"] == "fits"
    assert len(params["prompt"]) == MAX_VALUE
    assert params["prompt"].endswith(f"the full value is in {LONG_VALUES_ARTIFACT}]")
    assert params["prompt"].startswith(prompt[:5000])
    local = client.download_artifacts(run_id, LONG_VALUES_ARTIFACT, str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"prompt": prompt}


def test_names_mlflow_refuses_and_odd_keys_are_skipped_and_lists_of_data_are_datasets() -> None:
    """A key too long or with a character MLflow refuses, and a mapping key that is neither a string nor
    a number, are skipped; number keys are names; a list of Files is one dataset per item, and a local
    path's source type is "local"; a time is its ISO text."""

    def f(grid: dict[Any, int], shards: list[File], at: datetime.time) -> None: ...

    grid = {"a+b": 1, "x" * 300: 2, 7: 3, (1, 2): 4, "ok": 5}
    got = inputs_of(f, (grid, [File(path="/data/0.csv"), File(path="/data/1.csv")], datetime.time(9, 30)), {})
    assert got.params == {"grid.7": "3", "grid.ok": "5", "at": "09:30:00"}
    assert [(d.dataset.name, d.dataset.source_type) for d in got.datasets] == [
        ("shards.0", "local"),
        ("shards.1", "local"),
    ]


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("db_passwd", True),
        ("openai_api_key", True),
        ("hfToken", True),
        ("AWS_ACCESS_KEY", True),
        ("private_key", True),
        ("auth", True),
        ("max_tokens", False),
        ("author", False),
        ("keyboard", False),
        ("tokenizer", False),
    ],
)
def test_credential_names(name: str, secret: bool) -> None:
    """Names with a credential word or pair are secrets; words that merely contain one are not."""
    assert looks_like_credential(name) is secret


def test_a_deep_structure_stops_at_the_documented_depth() -> None:
    """Keys have at most ``MAX_DEPTH`` parts: the fourth level of a dict is recorded, the fifth is not."""

    def f(cfg: dict[str, Any]) -> None: ...

    got = inputs_of(f, ({"a": {"b": {"c": 1, "d": {"e": 2}}}},), {}).params
    assert got == {"cfg.a.b.c": "1"}
    assert MAX_DEPTH == 4


@pytest.mark.parametrize("policy", [OnTrackingError.RAISE, OnTrackingError.WARN])
def test_inputs_that_cannot_be_stored_follow_on_tracking_error(
    policy: OnTrackingError, mlflow_server: MlflowServer, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """A server that hangs up on the log-inputs request: under ``raise`` the call fails and its run is
    FAILED; under ``warn`` the body runs and the run FINISHES with its params."""
    relay = Relay(mlflow_server.uri, before=lambda method, path: not path.endswith("/runs/log-inputs"))
    ran: list[str] = []
    try:

        @mlflow_run(
            tracking_uri=relay.uri,
            experiment_id=experiment[1],
            log_inputs=True,
            on_tracking_error=policy,
            request_retries=0,
            outage_timeout=0,
        )
        def tracked(lr: float, data: File) -> None:
            ran.append(own_run_id())

        if policy is OnTrackingError.RAISE:
            with pytest.raises(MlflowTrackingError, match="record the run's inputs"):
                tracked(0.5, File(path=DATA))
            assert ran == []
        else:
            tracked(0.5, File(path=DATA))
            assert len(ran) == 1
    finally:
        relay.close()
    (run,) = client.search_runs([experiment[1]])
    assert run.info.status == ("FAILED" if policy is OnTrackingError.RAISE else "FINISHED")
    assert run.data.params == {"lr": "0.5"}


def test_a_rank_other_than_0_records_nothing(
    mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """Only rank 0 logs: on rank 1 a tracked call with ``log_inputs=True`` makes no request."""

    @mlflow_run(tracking_uri=mlflow_server.uri, experiment_id=experiment[1], log_inputs=True, rank=1)
    def tracked(lr: float) -> None: ...

    mark = mlflow_server.mark()
    tracked(0.5)
    assert mlflow_server.requests(mark) == []


# --- in the MLflow UI --------------------------------------------------------------------------


def test_the_run_page_shows_the_inputs_as_params_and_datasets(
    mlflow_server: MlflowServer, experiment: tuple[str, str], browser: Browser
) -> None:
    """MLflow's run page lists a task's inputs under Parameters and its data inputs under Datasets, each
    with its digest and the context "Input"; the credential-named input is nowhere."""
    config = mlflow_config(tracking_uri=mlflow_server.uri, experiment_id=experiment[1])
    run_id = run_local(config, every_type, **EVERY_TYPE)
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    page.goto(
        f"{mlflow_server.uri}/#/experiments/{experiment[1]}/runs/{run_id}?workflowType=machine_learning"
    )
    page.get_by_text("config.schedule.warmup").first.wait_for(timeout=30_000)
    if page.get_by_role("button", name="Close").count() == 1:  # MLflow's assistant panel, beside the run
        page.get_by_role("button", name="Close").click()
    assert page.get_by_text("Parameters (15)").count() == 1
    for name in ("optimizer", "model.activation", "extra.dropout", "note"):
        assert page.get_by_text(name, exact=True).count() == 1, name
    page.get_by_text("data (5d41402abc4b2a76b9719d911017c592)").wait_for(timeout=30_000)
    page.get_by_text("+2", exact=True).first.click()  # the other two datasets, in a list that opens
    for dataset in ("images", "table"):
        page.get_by_text(re.compile(rf"^{dataset} \([0-9a-f]{{16}}\)$")).wait_for(timeout=30_000)
    assert page.get_by_text(re.compile("^input$", re.IGNORECASE)).count() == 3  # each one's context
    body = page.locator("body").inner_text()
    assert "api_key" not in body and "never-recorded" not in body
    screenshot(page, "inputs-params-and-datasets")
    page.close()
