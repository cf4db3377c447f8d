"""What a tracked call knows before it acts: its task's context and what the calling task passed down."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Final

import attrs

from flyteplugins.mlflow import _flyte
from flyteplugins.mlflow._settings.config import MlflowConfig, decode
from flyteplugins.mlflow._tags import (
    ACTION_NAME_TAG,
    DOMAIN_TAG,
    PARENT_EXPERIMENT_KEY,
    PARENT_RUN_KEY,
    PROJECT_TAG,
    RESOLVED_EXPERIMENTS_KEY,
    ROOT_ACTION_KEY,
    RUN_NAME_TAG,
)

__all__ = ["RANK_VARIABLES", "Inherited", "TaskSnapshot", "env_rank", "snapshot"]


@attrs.frozen
class Inherited:
    """What the calling task's run passes down: its run and experiment, resolved experiment names, and
    the Flyte action of the workflow's root run (whose end sweeps the runs left ``RUNNING`` under it)."""

    run_id: str | None = None
    experiment_id: str | None = None
    experiment_ids: Mapping[str, str] = attrs.field(factory=dict)
    root_action: str | None = None

    @classmethod
    def from_context(cls, context: Mapping[str, str]) -> Inherited:
        """Read the inherited state from a ``custom_context``.

        Raises:
            ValueError: the resolved-experiments entry is not a JSON object of strings.
        """
        raw = context.get(RESOLVED_EXPERIMENTS_KEY) or "{}"
        try:
            resolved = json.loads(raw)
        except ValueError:
            resolved = None
        if not isinstance(resolved, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in resolved.items()
        ):
            msg = f"custom_context[{RESOLVED_EXPERIMENTS_KEY!r}] = {raw!r} must be a JSON object of strings"
            raise ValueError(msg)
        return cls(
            run_id=context.get(PARENT_RUN_KEY) or None,
            experiment_id=context.get(PARENT_EXPERIMENT_KEY) or None,
            experiment_ids=resolved,
            root_action=context.get(ROOT_ACTION_KEY) or None,
        )


@attrs.frozen
class TaskSnapshot:
    """The plain values a tracked call needs from the Flyte task context, read once per task."""

    in_task: bool = False
    config: MlflowConfig | None = None
    inherited: Inherited = Inherited()
    flyte_tags: Mapping[str, str] = attrs.field(factory=dict)
    attempt: int | None = None
    env_rank: int | None = None
    restart: int = 0
    action_id: str | None = None
    flyte_url: str | None = None
    raw_data: str | None = None  # the task's raw-data prefix (local or in Flyte's store)

    @property
    def retried(self) -> bool:
        """Whether this is a retry: a Flyte attempt after the first, or a restart of elastic workers."""
        return bool(self.attempt) or self.restart > 0

    @property
    def attempt_label(self) -> str | None:
        """This attempt's name on a run: ``"2"`` for Flyte attempt 2, ``"2.1"`` after one elastic restart."""
        if self.attempt is None:
            return None
        return f"{self.attempt}.{self.restart}" if self.restart else str(self.attempt)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"the {name} environment variable must be a whole number (0 or more), got {raw!r}"
        raise ValueError(msg)
    return value


RANK_VARIABLES: Final = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
"""Where a process's rank is read from, in this order: PyTorch's launchers, SLURM, Open MPI, MPICH and
Intel MPI. The first one that is set (and not empty) decides."""


def env_rank() -> int | None:
    """This process's rank from the environment (:data:`RANK_VARIABLES`), or ``None`` if none is set.

    Raises:
        ValueError: the first variable set is not a whole number; the message names it and its value.
    """
    for name in RANK_VARIABLES:
        value = _env_int(name)
        if value is not None:
            return value
    return None


def snapshot() -> TaskSnapshot:
    """Read the running task's context, once per tracked call.

    Raises:
        ValueError: a malformed ``mlflow_*`` entry in ``custom_context``, or a malformed ``RANK`` or
            ``TORCHELASTIC_RESTART_COUNT``.
    """
    rank = env_rank()
    task = _flyte.running_task()
    if task is None:
        return TaskSnapshot(env_rank=rank)
    restart = _env_int("TORCHELASTIC_RESTART_COUNT") or 0
    tags = {
        ACTION_NAME_TAG: task.action_name,
        RUN_NAME_TAG: task.run_name,
        PROJECT_TAG: task.project,
        DOMAIN_TAG: task.domain,
    }
    return TaskSnapshot(
        in_task=True,
        config=decode(task.context),
        inherited=Inherited.from_context(task.context),
        flyte_tags={k: v for k, v in tags.items() if v},
        attempt=task.attempt,
        env_rank=rank,
        restart=restart,
        action_id=task.action_id,
        flyte_url=task.console_url(),
        raw_data=task.raw_data,
    )
