"""MLflow's per-thread and per-process state, kept per tracked call while tracked tasks run.

Six trials run side by side under a tracked parent. Each checks what MLflow remembers for it (the last
logged model, the active model), or fits an autologged model that must land, with its params,
metrics and exactly one model, in the trial's own run: sync trials on Flyte's worker threads, async
trials fitting in ``asyncio.to_thread``, and async trials fitting inline. The fit is a pipeline, so
each trial's fit also has fits nested inside it, which MLflow must still treat as nested.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

import flyte
import mlflow
import mlflow.models.model
import mlflow.sklearn
import numpy as np
import pytest
from flyte.extend import TaskTemplate
from mlflow.tracking import MlflowClient, fluent
from mlflow.utils import autologging_utils
from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS, safety
from mlflow.utils.thread_utils import ThreadLocalVariable

from flyteplugins.mlflow import mlflow_config, mlflow_run
from flyteplugins.mlflow._patches import per_call_state as _state
from flyteplugins.mlflow._patches.current import TrackedCall, entered
from tests.helpers.support import ArtifactServer, own_run_id

env = flyte.TaskEnvironment(name="state-tests")

TRIALS = 6
FEATURES = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]])
LABELS = np.array([0, 1, 0, 1, 0, 1])
C_PARAM = "logisticregression__C"


def _slow(x: Any) -> Any:
    """The pipeline's first step: slow enough that the trials' fits overlap."""
    time.sleep(0.3)
    return x


def _pipeline(i: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return make_pipeline(FunctionTransformer(_slow), LogisticRegression(C=float(i + 1), max_iter=100))


def _fit(i: int) -> None:
    """Fit trial ``i``'s pipeline; its steps' fits run nested inside the pipeline's."""
    _pipeline(i).fit(FEATURES, LABELS)


def _tiny_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=100).fit(FEATURES, LABELS)


# --- the trials --------------------------------------------------------------------------------


@mlflow_run(run_mode="nested")
@env.task
async def last_model_trial(i: int) -> list[str]:
    info = mlflow.sklearn.log_model(_tiny_model(), name=f"model-{i}", pip_requirements=["scikit-learn"])
    await asyncio.sleep(0.2)
    last = mlflow.last_logged_model()
    return [str(info.model_id), "" if last is None else str(last.model_id)]


@mlflow_run(run_mode="nested")
@env.task
async def active_model_trial(i: int, tag: str) -> list[str]:
    active = mlflow.set_active_model(name=f"active-{tag}-{i}")
    await asyncio.sleep(0.2)
    return [str(active.model_id), str(fluent.get_active_model_id())]


@mlflow_run(run_mode="nested")
@env.task
async def last_run_trial(i: int) -> list[str]:
    with mlflow.start_run(run_name=f"by-hand-{i}", nested=True):
        mlflow.log_param("i", i)
    await asyncio.sleep(0.2)
    last = mlflow.last_active_run()  # the trial's own run: it is active (MLflow answers that first)
    return [own_run_id(), "" if last is None else last.info.run_id]


AUTOLOG: dict[str, Any] = {"run_mode": "nested", "autolog": True, "framework": "sklearn", "log_models": True}


@mlflow_run(**AUTOLOG)
@env.task
def sync_fit_trial(i: int) -> str:
    _fit(i)
    return own_run_id()


@mlflow_run(**AUTOLOG)
@env.task
async def thread_fit_trial(i: int) -> str:
    await asyncio.to_thread(_fit, i)
    return own_run_id()


@mlflow_run(**AUTOLOG)
@env.task
async def inline_fit_trial(i: int) -> str:
    await asyncio.sleep(0)
    _fit(i)
    await asyncio.sleep(0)
    return own_run_id()


# --- the studies -------------------------------------------------------------------------------


@mlflow_run
@env.task
async def last_model_study(n: int) -> list[list[str]]:
    return list(await asyncio.gather(*(last_model_trial(i) for i in range(n))))


@mlflow_run
@env.task
async def active_model_study(n: int, tag: str) -> list[list[str]]:
    return list(await asyncio.gather(*(active_model_trial(i, tag) for i in range(n))))


@mlflow_run
@env.task
async def last_run_study(n: int) -> list[list[str]]:
    return list(await asyncio.gather(*(last_run_trial(i) for i in range(n))))


@mlflow_run
@env.task
async def sync_fit_study(n: int) -> list[str]:
    return list(await asyncio.gather(*(sync_fit_trial.aio(i) for i in range(n))))


@mlflow_run
@env.task
async def thread_fit_study(n: int) -> list[str]:
    return list(await asyncio.gather(*(thread_fit_trial(i) for i in range(n))))


@mlflow_run
@env.task
async def inline_fit_study(n: int) -> list[str]:
    return list(await asyncio.gather(*(inline_fit_trial(i) for i in range(n))))


def _run(task: TaskTemplate[Any, Any, Any], ctx: Any, *args: Any) -> Any:
    return flyte.with_runcontext(mode="local", custom_context=ctx).run(task, *args).outputs()[0]


@pytest.fixture(autouse=True)
def _quick_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up inferring a logged model's pip requirements after a second (MLflow then logs its defaults)."""
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")


@pytest.fixture
def tracking_uri(artifact_server: ArtifactServer) -> str:
    """This module's trials track into a server that proxies artifacts (``--serve-artifacts``), where
    models are uploaded through the server, as in production."""
    return artifact_server.uri


@pytest.fixture
def ctx(tracking_uri: str, experiment: tuple[str, str]) -> Any:
    """The workflow context: the artifact-serving server and a fresh experiment."""
    return mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1])


def _wrong_fits(client: MlflowClient, experiment_id: str, run_ids: list[str], start: int = 0) -> list[str]:
    """Describe each trial whose run lacks its own params and metrics, or holds other than one model."""
    models = client.search_logged_models(experiment_ids=[experiment_id], max_results=1000)
    problems = []
    for i, run_id in enumerate(run_ids, start):
        run = client.get_run(run_id)
        own_models = [m.name for m in models if m.source_run_id == run_id]
        got = (
            run.data.params.get(C_PARAM),
            "C" in run.data.params,
            "training_accuracy_score" in run.data.metrics,
            own_models,
        )
        want = (str(float(i + 1)), False, True, ["model"])
        if got != want:
            problems.append(
                f"trial {i}: run {run_id} holds (C, bare C, metric, models) {got}, expected {want}"
            )
    return problems


# --- the tests ---------------------------------------------------------------------------------


def test_last_logged_model_is_each_trials_own(ctx: Any) -> None:
    """mlflow.last_logged_model() in each of 6 parallel trials is the model that trial logged."""
    pairs: list[list[str]] = _run(last_model_study, ctx, TRIALS)
    wrong = [
        f"trial {i}: logged {own}, last_logged_model {last}"
        for i, (own, last) in enumerate(pairs)
        if own != last
    ]
    assert len({own for own, _ in pairs}) == TRIALS
    assert wrong == [], f"{len(wrong)} of {TRIALS} trials saw another trial's model: {wrong}"


def test_last_active_run_is_each_trials_own(ctx: Any) -> None:
    """mlflow.last_active_run() in each of 6 parallel trials, after the trial ended a run it started by
    hand, is the trial's own run, never another trial's."""
    pairs: list[list[str]] = _run(last_run_study, ctx, TRIALS)
    wrong = [
        f"trial {i}: ended {own}, last_active_run {last}"
        for i, (own, last) in enumerate(pairs)
        if own != last
    ]
    assert len({own for own, _ in pairs}) == TRIALS
    assert wrong == [], f"{len(wrong)} of {TRIALS} trials saw another trial's last run: {wrong}"


def test_active_model_is_each_trials_own(ctx: Any) -> None:
    """mlflow.set_active_model in one of 6 parallel trials does not change the others' active model."""
    pairs: list[list[str]] = _run(active_model_study, ctx, TRIALS, uuid.uuid4().hex[:8])
    wrong = [f"trial {i}: set {own}, active {seen}" for i, (own, seen) in enumerate(pairs) if own != seen]
    assert wrong == [], f"{len(wrong)} of {TRIALS} trials saw another trial's active model: {wrong}"
    assert fluent.get_active_model_id() is None, "a trial's active model leaked into the caller"


@pytest.mark.parametrize(
    "study",
    [sync_fit_study, thread_fit_study, inline_fit_study],
    ids=["sync-trials-on-threads", "async-trials-to-thread", "async-trials-inline"],
)
def test_parallel_autologged_fits_land_in_their_own_runs(
    study: TaskTemplate[Any, Any, Any], ctx: Any, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """Each of 6 parallel autologged trials records its own params, metrics and exactly one model."""
    run_ids: list[str] = _run(study, ctx, TRIALS)
    assert len(set(run_ids)) == TRIALS
    wrong = _wrong_fits(client, experiment[1], run_ids)
    assert wrong == [], f"{len(wrong)} of {TRIALS} trials did not record their own fit: {wrong}"


def _mlflow_objects() -> dict[str, object]:
    """MLflow's own state objects, by where they live."""
    from mlflow.sklearn import _SklearnTrainingSession

    return {
        "fluent._last_active_run_id": fluent._last_active_run_id,
        "fluent._last_logged_model_id": fluent._last_logged_model_id,
        "model._last_logged_model_id": vars(mlflow.models.model)["_last_logged_model_id"],
        "fluent._ACTIVE_MODEL_CONTEXT": fluent._ACTIVE_MODEL_CONTEXT,
        "safety._AutologgingSessionManager": safety._AutologgingSessionManager,
        "_SklearnTrainingSession._session_stack": _SklearnTrainingSession.__dict__["_session_stack"],
    }


def test_mlflow_state_is_its_own_again_after_the_last_task(
    ctx: Any, tracking_uri: str, client: MlflowClient, experiment: tuple[str, str]
) -> None:
    """After the last tracked task MLflow's state objects are its own; an untracked fit works as usual."""
    from mlflow.sklearn import _SklearnTrainingSession

    before = _mlflow_objects()
    own_values = (fluent._last_active_run_id.get(), fluent._last_logged_model_id.get())  # earlier tests'
    run_ids: list[str] = _run(thread_fit_study, ctx, 2)
    assert len(run_ids) == 2
    after = _mlflow_objects()
    assert {k: v is before[k] for k, v in after.items()} == dict.fromkeys(before, True)
    for name in ("_last_active_run_id", "_last_logged_model_id", "_ACTIVE_MODEL_CONTEXT"):
        assert type(getattr(fluent, name)) is ThreadLocalVariable, name
    assert type(safety._AutologgingSessionManager) is type
    assert "_session" in safety._AutologgingSessionManager.__dict__
    assert type(_SklearnTrainingSession.__dict__["_session_stack"]) is list
    assert not any(s.is_active() for s in autologging_utils._training_sessions)
    assert (fluent._last_active_run_id.get(), fluent._last_logged_model_id.get()) == own_values, (
        "no trial's run or model became this thread's last one"
    )
    assert not set(run_ids) & {own_values[0]}

    # An untracked, plainly autologged fit now works exactly as MLflow does on its own.
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.sklearn.autolog(log_models=True)
        with mlflow.start_run(experiment_id=experiment[1]) as run:
            assert safety._AutologgingSessionManager.active_session() is None
            _fit(6)
        assert _wrong_fits(client, experiment[1], [run.info.run_id], start=6) == [], (
            "the pipeline logs its own params and one model; its nested fits log nothing"
        )
        last = mlflow.last_logged_model()
        assert last is not None and last.source_run_id == run.info.run_id
        last_run = fluent.last_active_run()
        assert last_run is not None and last_run.info.run_id == run.info.run_id
        assert fluent._last_logged_model_id.get() == last.model_id, "MLflow's own thread-local holds it"
        assert _SklearnTrainingSession._session_stack == []
    finally:
        mlflow.sklearn.autolog(disable=True)
        AUTOLOGGING_INTEGRATIONS.pop("sklearn", None)
        fluent._last_logged_model_id.set(None)
        fluent._last_active_run_id.set(None)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_untracked_code_uses_mlflows_own_state_while_a_call_is_kept() -> None:
    """Inside a kept call values are its own; another thread, untracked, reads and writes MLflow's own."""
    seen: list[object] = []

    def untracked() -> None:
        seen.append(fluent._last_logged_model_id.get())
        fluent._last_logged_model_id.set("theirs")
        seen.append(type(fluent._last_logged_model_id).__name__)

    with _state.PATCH.held(None), entered(TrackedCall(owner=None, cells={})):
        assert _state.PATCH.installed()
        fluent._last_logged_model_id.set("ours")
        worker = threading.Thread(target=untracked)
        worker.start()
        worker.join()
        assert fluent._last_logged_model_id.get() == "ours"
    assert not _state.PATCH.installed()
    assert seen == [None, "ContextLocalVariable"]
    assert fluent._last_logged_model_id.get() is None, "the kept value went with its call"


def test_changed_mlflow_internals_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MLflow no longer keeps a piece of state as expected, the check fails naming the MLflow version."""
    monkeypatch.setattr(fluent, "_last_active_run_id", None)
    with pytest.raises(RuntimeError, match=f"mlflow {mlflow.__version__}.*_last_active_run_id"):
        _state._check()
    with pytest.raises(RuntimeError, match="_last_active_run_id"), _state.PATCH.held(None):
        pass
    assert not _state.PATCH.installed()
    monkeypatch.undo()
    assert type(fluent._last_logged_model_id) is ThreadLocalVariable, "nothing was left half-installed"
    assert safety._AutologgingSessionManager is _state.ContextLocalSessionManager._fallback


def test_changed_process_state_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MLflow no longer keeps its tracking URI where the process-state patch saves it, the first tracked
    call fails naming the MLflow version, and nothing is left changed."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from flyteplugins.mlflow._patches import process_state

    before = os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.delattr(tracking_utils, "_tracking_uri")
    with pytest.raises(RuntimeError, match=f"mlflow {mlflow.__version__}.*_tracking_uri"):
        process_state.hold("http://127.0.0.1:1", None)
    monkeypatch.undo()
    assert not process_state.URI.installed()
    assert process_state.open_tasks() == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_a_store_without_mlflows_queue_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MLflow's store no longer keeps its asynchronous-logging queue where the plugin puts its own,
    a tracked call with queued logging fails naming the MLflow version, and nothing is left changed."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from flyteplugins.mlflow._patches import process_state

    uri = "http://127.0.0.1:1"
    store = tracking_utils._get_store(uri)
    before = os.environ.get("MLFLOW_ENABLE_ASYNC_LOGGING"), os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.delattr(store, "_async_logging_queue")
    with pytest.raises(RuntimeError, match=f"mlflow {mlflow.__version__}.*_async_logging_queue"):
        process_state.hold(uri, None, async_logging=True)
    assert not process_state.ASYNC.installed() and not process_state.URI.installed()
    assert process_state.queue() is None
    assert (os.environ.get("MLFLOW_ENABLE_ASYNC_LOGGING"), os.environ.get("MLFLOW_TRACKING_URI")) == before
