"""Static checks of the public API: mypy checks this file, pytest never collects or runs it.

Lines that must be rejected carry ``# type: ignore[<code>]``. Under ``mypy --strict``
(``warn_unused_ignores``), an ignore that silences nothing is itself an error, so if one of these
mistakes ever stopped being a type error, ``mypy`` would fail on this file. Check it with
``.venv/bin/mypy tests/typing/check_api.py`` (``make typecheck`` includes it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs
import flyte
from flyte.extend import AsyncFunctionTaskTemplate
from mlflow.tracking.fluent import ActiveRun
from typing_extensions import ParamSpec, assert_type

from flyteplugins.mlflow import (
    LinkTarget,
    Mlflow,
    MlflowConfig,
    MlflowRun,
    MlflowTrackingError,
    OnRetry,
    OnTrackingError,
    ReportGoal,
    RunMode,
    TrackingRequestError,
    TrackingServerUnreachable,
    get_mlflow_context,
    get_mlflow_run,
    get_mlflow_run_id,
    mlflow_config,
    mlflow_run,
)

P = ParamSpec("P")
R = TypeVar("R")

env = flyte.TaskEnvironment(name="typing-check-api")
tracker = MlflowRun(experiment_name="typing", tags={"team": "ml"})


# --- a decorated task keeps its exact Flyte task type ----------------------------------------------


def decorating_keeps_the_task_type(task: AsyncFunctionTaskTemplate[P, R, Callable[P, R]]) -> None:
    """For every task signature, each way of decorating returns exactly the task's type."""
    assert_type(tracker(task), AsyncFunctionTaskTemplate[P, R, Callable[P, R]])
    assert_type(mlflow_run(task), AsyncFunctionTaskTemplate[P, R, Callable[P, R]])
    assert_type(mlflow_run(run_mode="nested")(task), AsyncFunctionTaskTemplate[P, R, Callable[P, R]])
    assert_type(tracker.for_rank(0)(task), AsyncFunctionTaskTemplate[P, R, Callable[P, R]])


@env.task
async def train(epochs: int, learning_rate: float = 0.1) -> str:
    return f"{epochs}:{learning_rate}"


@env.task
def evaluate(run_id: str) -> float:
    return float(len(run_id))


decorating_keeps_the_task_type(train)
decorating_keeps_the_task_type(evaluate)
tracked_train = tracker(train)
tracked_evaluate = mlflow_run(evaluate)

# The decorated copy and the original have the same type: each is assignable to the other.
same_train = train
same_train = tracked_train
tracked_train = train
same_evaluate = evaluate
same_evaluate = tracked_evaluate
tracked_evaluate = evaluate

# ... and a task with another signature is not.
tracked_train = evaluate  # type: ignore[assignment]


async def calling_tracked_tasks() -> None:
    assert_type(await tracked_train(3), str)
    assert_type(await tracked_train(epochs=3, learning_rate=0.5), str)
    assert_type(await tracked_evaluate.aio("abc"), float)

    await tracked_train("three")  # type: ignore[call-overload]
    await tracked_train(3, learning_rate="fast")  # type: ignore[call-overload]
    await tracked_train(3, lr=0.5)  # type: ignore[call-overload]
    tracked_evaluate(42)  # type: ignore[arg-type]


# --- a decorated function keeps its signature ------------------------------------------------------


def wrapping_keeps_the_signature(func: Callable[P, R]) -> None:
    """For every function, the wrapper has exactly the function's parameters and return type."""
    assert_type(tracker(func), Callable[P, R])
    assert_type(mlflow_run(func), Callable[P, R])
    assert_type(mlflow_run(run_mode=RunMode.NEW)(func), Callable[P, R])


@tracker
def fit(rows: int, *, name: str = "model") -> float:
    return rows / 2


@mlflow_run(run_mode="nested")
async def trial(number: int) -> dict[str, float]:
    return {"score": float(number)}


class Trainer:
    @tracker
    def step(self, batch: list[float]) -> float:
        return sum(batch)


async def calling_tracked_functions() -> None:
    assert_type(fit(10, name="forest"), float)
    assert_type(await trial(1), dict[str, float])
    assert_type(Trainer().step([1.0, 2.0]), float)

    fit("ten")  # type: ignore[arg-type]
    fit(10, "forest")  # type: ignore[call-arg]
    fit(10, label="forest")  # type: ignore[call-arg]
    await trial(number="one")  # type: ignore[arg-type]
    Trainer().step(1.0)  # type: ignore[arg-type]


# --- settings are checked ------------------------------------------------------------------------

MlflowRun(run_mode=RunMode.NESTD)  # type: ignore[attr-defined]
mlflow_run(run_mode=RunMode.Nested)  # type: ignore[attr-defined]
mlflow_config(on_tracking_error=OnTrackingError.IGNORE)  # type: ignore[attr-defined]

mlflow_run(run_mode="nestd")  # type: ignore[call-overload]
mlflow_config(run_mode="nestd")  # type: ignore[arg-type]
mlflow_config(on_tracking_error="ignore")  # type: ignore[arg-type]
mlflow_config(on_retry="restart")  # type: ignore[arg-type]
mlflow_run(on_retry=OnRetry.RESTART)  # type: ignore[attr-defined]
resumes: MlflowRun = mlflow_run(on_retry="resume")
mlflow_config(report_goal="lowest")  # type: ignore[arg-type]
mlflow_run(report_goal=ReportGoal.LOWEST)  # type: ignore[attr-defined]
mlflow_run(report=True, report_metric=3)  # type: ignore[call-overload]
reports: MlflowRun = mlflow_run(report=True, report_metric="rmse", report_goal="maximize")
records: MlflowRun = mlflow_run(run_mode="nested", log_inputs=True)
mlflow_run(log_inputs="yes")  # type: ignore[call-overload]

MlflowRun(tags=["team", "ml"])  # type: ignore[arg-type]
MlflowRun(tags="team=ml")  # type: ignore[arg-type]
mlflow_run(tags=[("team", "ml")])  # type: ignore[call-overload]
mlflow_config(tags="team=ml")  # type: ignore[arg-type]
MlflowConfig(tags={"epochs": 3})  # type: ignore[dict-item]

MlflowRun(rank="0")  # type: ignore[arg-type]
mlflow_run(rank="0")  # type: ignore[call-overload]
tracker.for_rank("0")  # type: ignore[arg-type]

mlflow_config(rank=0)  # type: ignore[call-arg]
mlflow_config(unknown_setting=True)  # type: ignore[call-arg]

# --- trackers and configs are immutable -----------------------------------------------------------

tracker.run_mode = RunMode.NEW  # type: ignore[misc]
tracker.rank = 1  # type: ignore[misc]
tracker.tags = {"team": "infra"}  # type: ignore[misc]
config = mlflow_config(run_mode="new")
config.tracking_uri = "http://127.0.0.1:5000"  # type: ignore[misc]
# A config is a dict for Flyte's sake; writing to it is a TypeError at run time (tests/test_config.py).

# Changed copies come from methods and attrs.evolve, with their types intact.
assert_type(tracker.for_rank(1), MlflowRun)
assert_type(attrs.evolve(tracker, run_mode=RunMode.NESTED), MlflowRun)
assert_type(attrs.evolve(config, tags={"role": "baseline"}), MlflowConfig)

# --- the rest of the public surface --------------------------------------------------------------

assert_type(mlflow_run(run_mode="new"), MlflowRun)
assert_type(mlflow_config(tracking_uri="http://127.0.0.1:5000", tags={"team": "ml"}), MlflowConfig)
assert_type(tracker.config(), MlflowConfig)
assert_type(tracker.link(), Mlflow)
assert_type(tracker.link(name="Study"), Mlflow)
assert_type(get_mlflow_run(), ActiveRun | None)
assert_type(get_mlflow_run_id(), str | None)
assert_type(get_mlflow_context(), MlflowConfig | None)

as_mapping: Mapping[str, str] = tracker.config()
links: tuple[flyte.Link, ...] = (Mlflow(), tracker.link())
errors: tuple[type[MlflowTrackingError], ...] = (TrackingServerUnreachable, TrackingRequestError)
assert_type(RunMode("nested"), RunMode)
assert_type(OnTrackingError("warn"), OnTrackingError)
assert_type(OnRetry("resume"), OnRetry)
assert_type(MlflowConfig(on_retry="new").on_retry, OnRetry)
assert_type(ReportGoal("maximize"), ReportGoal)
assert_type(MlflowConfig(report_goal="minimize").report_goal, ReportGoal | None)
assert_type(mlflow_config(report=True).report, bool)
assert_type(mlflow_config(log_inputs=True).log_inputs, bool)
assert_type(mlflow_config(tracing=True).tracing, bool)
traced: MlflowRun = mlflow_run(tracing=True)
mlflow_run(tracing="yes")  # type: ignore[call-overload]


# --- links to a task's own run -----------------------------------------------------------------


def own_run_links() -> None:
    """The link target is an enum (or its string value) on Mlflow and tracker.link(); misspellings fail."""
    assert_type(Mlflow(target=LinkTarget.OWN), Mlflow)
    assert_type(tracker.link(target="own"), Mlflow)
    assert_type(Mlflow().target, LinkTarget)
    Mlflow(target=LinkTarget.MINE)  # type: ignore[attr-defined]
    Mlflow(target=1)  # type: ignore[arg-type]
    tracker.link(target=None)  # type: ignore[arg-type]
