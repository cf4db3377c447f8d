"""Everything the plugin reads from, or scopes onto, Flyte's task context. No other module touches it.

What flows through ``custom_context``:

* the settings (``mlflow_<field>``, see :mod:`flyteplugins.mlflow._config`), from
  ``with_runcontext(custom_context=mlflow_config(...))`` or a ``with mlflow_config(...)`` block;
* what a tracked task tells the tasks it calls (:class:`Inherited`): its run id and experiment id,
  and the experiment ids it resolved from names, so children need no lookups of their own.

Flyte snapshots the context when a child is submitted, so a scoped change made here reaches exactly
the tasks called inside the scope, in this process or in another one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator, Mapping
from typing import Final

import attrs
import flyte
from flyte.models import ActionID

from flyteplugins.mlflow._config import CONTEXT_PREFIX, MlflowConfig, decode, encode, set_scope

__all__ = [
    "PARENT_EXPERIMENT_KEY",
    "PARENT_RUN_KEY",
    "RESOLVED_EXPERIMENTS_KEY",
    "ROOT_ACTION_KEY",
    "Inherited",
    "TaskSnapshot",
    "children_scope",
    "current_config",
    "current_task",
    "enter_scope",
    "env_rank",
    "exit_scope",
    "snapshot",
]

PARENT_RUN_KEY = CONTEXT_PREFIX + "parent_run_id"
PARENT_EXPERIMENT_KEY = CONTEXT_PREFIX + "parent_experiment_id"
RESOLVED_EXPERIMENTS_KEY = CONTEXT_PREFIX + "experiment_ids"
ROOT_ACTION_KEY = CONTEXT_PREFIX + "root_action"


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
    """The plain values the lifecycle needs from the Flyte task context, read once per task."""

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
    """Read the current task's context.

    Raises:
        ValueError: a malformed ``mlflow_*`` entry in ``custom_context``, or a malformed ``RANK`` or
            ``TORCHELASTIC_RESTART_COUNT``.
    """
    rank = env_rank()
    tctx = flyte.ctx()
    if not tctx:
        return TaskSnapshot(env_rank=rank)
    restart = _env_int("TORCHELASTIC_RESTART_COUNT") or 0
    context = tctx.custom_context or {}
    action = tctx.task_action or tctx.action
    tags = {
        "flyte.action_name": action.name,
        "flyte.run_name": action.run_name,
        "flyte.project": action.project,
        "flyte.domain": action.domain,
    }
    return TaskSnapshot(
        in_task=True,
        config=decode(context),
        inherited=Inherited.from_context(context),
        flyte_tags={k: v for k, v in tags.items() if v},
        attempt=tctx.attempt_number,
        env_rank=rank,
        restart=restart,
        action_id="/".join(
            str(part or "") for part in (action.project, action.domain, action.run_name, action.name)
        ),
        flyte_url=_console_action_url(action) if tctx.mode == "remote" else None,
        raw_data=str(tctx.raw_data_path.path) if tctx.raw_data_path else None,
    )


def _console_action_url(action: ActionID) -> str | None:
    """The console address of a remote task's action, from Flyte's own client; ``None`` without a client.

    A task pod that can start tasks has a client (``flyte.init_in_cluster``); its console is where the
    client's endpoint serves it. The ``flyte_console_url`` setting wins over this.
    """
    if not (action.project and action.domain and action.run_name and action.name):
        return None
    try:  # Flyte keeps its client in a private module: a Flyte that moved it gives no address
        from flyte._initialize import _get_init_config

        config = _get_init_config()
        client = config.client if config is not None else None
        if client is None:
            return None
        url: str = client.console.action_url(
            project=action.project, domain=action.domain, run_name=action.run_name, action_name=action.name
        )
    except (ImportError, AttributeError):
        return None
    return url


def current_task() -> str | None:
    """The name of the Flyte action whose task body is running here, or ``None`` outside a task.

    A ``@flyte.trace`` function runs under a pseudo-action of its own; it counts as its task's.
    """
    tctx = flyte.ctx()
    if not tctx:
        return None
    return (tctx.task_action or tctx.action).name


def current_config() -> MlflowConfig | None:
    """The settings in the current task's ``custom_context``, or ``None``.

    Raises:
        ValueError: a malformed ``mlflow_*`` entry.
    """
    tctx = flyte.ctx()
    if not tctx:
        return None
    return decode(tctx.custom_context or {})


@contextlib.contextmanager
def children_scope(entries: Mapping[str, str]) -> Iterator[None]:
    """Add ``entries`` to the context of every task called inside the block (no-op outside a task)."""
    if not entries or not flyte.ctx():
        yield
        return
    with flyte.custom_context(**entries):
        yield


# --- ``with mlflow_config(...)`` ---------------------------------------------------------------

_PAIRS = {
    "experiment_name": "experiment_id",
    "experiment_id": "experiment_name",
    "run_name": "run_id",
    "run_id": "run_name",
}

_OPEN_SCOPES: contextvars.ContextVar[tuple[contextlib.ExitStack, ...]] = contextvars.ContextVar(
    "flyteplugins_mlflow_config_scopes", default=()
)


def scoped_entries(config: MlflowConfig, current: MlflowConfig | None) -> dict[str, str]:
    """The ``custom_context`` entries that apply ``config`` on top of ``current``.

    Tags are added to the current tags. Setting one of a mutually exclusive pair (experiment name or
    id, run name or id) clears the other, so the result is always a valid configuration.
    """
    entries = encode(config)
    if current is not None and config.tags:
        entries[CONTEXT_PREFIX + "tags"] = encode(attrs.evolve(config, tags={**current.tags, **config.tags}))[
            CONTEXT_PREFIX + "tags"
        ]
    for name, partner in _PAIRS.items():
        if getattr(config, name) is not None:
            entries[CONTEXT_PREFIX + partner] = ""
    return entries


def enter_scope(config: MlflowConfig) -> None:
    """Open a ``with mlflow_config(...)`` block: its settings apply to tasks called inside it.

    Raises:
        ValueError: the context already holds malformed settings.
    """
    stack = contextlib.ExitStack()
    stack.enter_context(children_scope(scoped_entries(config, current_config())))
    _OPEN_SCOPES.set((*_OPEN_SCOPES.get(), stack))


def exit_scope() -> None:
    """Close the innermost open ``with mlflow_config(...)`` block of this context."""
    scopes = _OPEN_SCOPES.get()
    if not scopes:
        return
    _OPEN_SCOPES.set(scopes[:-1])
    scopes[-1].close()


set_scope(enter_scope, exit_scope)
