"""The plan for retries and the sweep, from plain values: which calls look up earlier attempts, which
runs carry which tags, and which call sweeps. No Flyte and no server: ``plan`` makes no calls."""

from __future__ import annotations

import pytest

from flyteplugins.mlflow import MlflowConfig, MlflowRun, OnRetry, mlflow_config
from flyteplugins.mlflow._plan.plan import plan
from flyteplugins.mlflow._plan.snapshot import Inherited, TaskSnapshot, env_rank
from flyteplugins.mlflow._tags import ACTION_ID_TAG, ATTEMPT_LIST_TAG, ROOT_ACTION_KEY, ROOT_TAG

URI = "http://127.0.0.1:5000"
ACTION = "proj/dev/run-1/a3"


def task(attempt: int = 0, restart: int = 0, **kw: object) -> TaskSnapshot:
    """The snapshot of a task with action ``ACTION`` at this attempt and elastic restart."""
    return TaskSnapshot(in_task=True, attempt=attempt, restart=restart, action_id=ACTION, **kw)  # type: ignore[arg-type]


def test_first_attempt_tags_its_run_and_looks_nothing_up() -> None:
    """Attempt 0 carries its action and attempt in the create request and plans no look-up."""
    p = plan(MlflowRun(), None, task(), URI)
    assert p is not None and p.opening == "create" and p.retry is None
    assert p.tags[ACTION_ID_TAG] == ACTION and p.tags[ATTEMPT_LIST_TAG] == "0"


@pytest.mark.parametrize(
    ("attempt", "restart", "label"), [(1, 0, "1"), (3, 0, "3"), (0, 1, "0.1"), (2, 4, "2.4")]
)
def test_retries_and_elastic_restarts_look_up_earlier_runs(attempt: int, restart: int, label: str) -> None:
    """A Flyte attempt after the first, or an elastic restart, plans the look-up, with its own label."""
    p = plan(MlflowRun(), None, task(attempt, restart), URI)
    assert p is not None and p.retry is OnRetry.NEW
    assert p.tags[ATTEMPT_LIST_TAG] == label


def test_the_tracker_wins_over_the_context_for_on_retry() -> None:
    """``on_retry`` follows the usual precedence: tracker, then context; ``new`` defers."""
    resume_ctx = task(1, config=mlflow_config(on_retry="resume"))
    by_context = plan(MlflowRun(), None, resume_ctx, URI)
    by_tracker = plan(MlflowRun(on_retry="resume"), None, task(1), URI)
    assert by_context is not None and by_context.retry is OnRetry.RESUME
    assert by_tracker is not None and by_tracker.retry is OnRetry.RESUME


def test_inner_calls_and_shared_runs_are_not_the_tasks_own() -> None:
    """A tracked call that is not a task's outermost body (a tracked function in a task), or a child
    sharing its caller's run, neither carries the action tag nor looks anything up on a retry."""
    inner = plan(MlflowRun(run_mode="nested"), None, task(1), URI, task_run=False)
    shared = plan(MlflowRun(), None, task(1, inherited=Inherited("parent", "0", root_action="r")), URI)
    assert inner is not None and inner.retry is None and ACTION_ID_TAG not in inner.tags
    assert shared is not None and shared.opening == "share" and shared.retry is None


def test_the_root_sweeps_and_tells_its_children() -> None:
    """A task with no tracked caller is the root: it sweeps at its end and passes its action down."""
    p = plan(MlflowRun(), None, task(), URI)
    assert p is not None and p.sweep_root == ACTION
    assert p.passed_down[ROOT_ACTION_KEY] == ACTION
    assert ROOT_TAG not in p.tags


@pytest.mark.parametrize("mode", ["nested", "new"])
def test_runs_under_a_root_carry_its_action_and_do_not_sweep(mode: str) -> None:
    """Every run created under a root, in any run mode, is tagged with the root's action."""
    inherited = Inherited("parent-run", "0", root_action="proj/dev/run-1/a0")
    p = plan(MlflowRun(run_mode=mode), None, task(inherited=inherited), URI)
    assert p is not None and p.sweep_root is None
    assert p.tags[ROOT_TAG] == "proj/dev/run-1/a0"


def test_outside_flyte_nothing_is_tagged_or_swept() -> None:
    """A tracked plain function outside any task has no action: no retry tags, no sweep."""
    p = plan(MlflowRun(), None, TaskSnapshot(), URI)
    assert p is not None and p.sweep_root is None and p.retry is None
    assert ACTION_ID_TAG not in p.tags


def test_a_request_timeout_bounds_connecting_and_answering() -> None:
    """Setting ``request_timeout`` (on the tracker or in the context) sets both limits of an attempt;
    setting only the retries keeps the default 4 s to connect and 30 s to answer."""
    timed = plan(MlflowRun(request_timeout=2), None, TaskSnapshot(), URI)
    assert timed is not None
    assert (timed.policy.timeout, timed.policy.answer_timeout) == (2.0, 2.0)
    assert timed.policy.describe() == "request_timeout=2s, request_retries=2"
    from_context = plan(MlflowRun(), None, TaskSnapshot(config=MlflowConfig(request_timeout=0.5)), URI)
    assert from_context is not None and from_context.policy.answer_timeout == 0.5
    retried = plan(MlflowRun(request_retries=1), None, TaskSnapshot(), URI)
    assert retried is not None
    assert (retried.policy.timeout, retried.policy.answer_timeout, retried.policy.retries) == (4.0, 30.0, 1)


def test_outage_timeout_comes_from_the_tracker_then_the_context() -> None:
    """``outage_timeout`` sets how long a reached server is waited for: the tracker's, else the
    context's, else 300 s; 0 on the tracker wins over the context's value."""
    default = plan(MlflowRun(), None, TaskSnapshot(), URI)
    assert default is not None and default.policy.outage == 300.0
    ctx = TaskSnapshot(config=MlflowConfig(outage_timeout=60.0))
    from_context = plan(MlflowRun(), None, ctx, URI)
    assert from_context is not None and from_context.policy.outage == 60.0
    own = plan(MlflowRun(outage_timeout=0), None, ctx, URI)
    assert own is not None and own.policy.outage == 0.0
    assert own.policy.for_finalize().outage == 0.0


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, None),
        ({"RANK": "2", "SLURM_PROCID": "5"}, 2),
        ({"SLURM_PROCID": "5", "OMPI_COMM_WORLD_RANK": "6"}, 5),
        ({"OMPI_COMM_WORLD_RANK": "6", "PMI_RANK": "7"}, 6),
        ({"PMI_RANK": "7"}, 7),
        ({"RANK": "", "PMI_RANK": "0"}, 0),
    ],
)
def test_rank_variables_are_read_in_order(
    variables: dict[str, str], expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RANK``, then SLURM's, Open MPI's and MPICH's variables: the first one set decides."""
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert env_rank() == expected


@pytest.mark.parametrize(("name", "value"), [("RANK", "one"), ("SLURM_PROCID", "-1"), ("PMI_RANK", "1.5")])
def test_a_malformed_rank_names_the_variable_and_the_value(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank variable that is not a whole number is a ValueError naming it and its value."""
    for other in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name) as info:
        env_rank()
    assert repr(value) in str(info.value)


def test_rank_scope_comes_from_the_tracker_then_the_context() -> None:
    """``rank_scope`` follows the usual precedence: tracker, then context; ``global`` defers."""
    from flyteplugins.mlflow import RankScope

    by_context = plan(MlflowRun(), None, task(0, config=mlflow_config(rank_scope="worker")), URI)
    by_tracker = plan(MlflowRun(rank_scope="worker"), None, task(0), URI)
    neither = plan(MlflowRun(), None, task(0), URI)
    assert by_context is not None and by_context.rank_scope is RankScope.WORKER
    assert by_tracker is not None and by_tracker.rank_scope is RankScope.WORKER
    assert neither is not None and neither.rank_scope is RankScope.GLOBAL


def test_rank_runs_carry_a_tracked_callers_root_but_not_rank_0s_own_sweep() -> None:
    """Under ``rank_scope="worker"`` a rank's run carries the root action that rank 0's run carries
    (a tracked caller's sweep covers it) and none when rank 0 is the root (its sweep may run before
    the other ranks end); it takes its own action and attempt, and ``on_retry`` on a restart."""
    from flyteplugins.mlflow._distributed import worker_runs as _worker_runs

    worker = MlflowRun(rank_scope="worker", run_mode="nested")
    child = task(0, 1, inherited=Inherited("parent", "0", root_action="root-action"))
    for snap, root in [(child, "root-action"), (task(0, 1), None)]:
        rank0 = plan(worker, 0, snap, URI)
        assert rank0 is not None
        made = _worker_runs.template(rank0, 2, worker, snap, "train", task_run=True)
        assert made is not None and made.run_name == "train-rank-2" and made.tags.get(ROOT_TAG) == root
        assert made.tags[ACTION_ID_TAG] == f"{ACTION}/rank-2" and made.tags[ATTEMPT_LIST_TAG] == "0.1"
        assert made.retry is OnRetry.NEW and made.sweep_root is None
    assert _worker_runs.template(plan(MlflowRun(), 0, task(), URI), 2, MlflowRun(), task(), "t", True) is None  # type: ignore[arg-type]
