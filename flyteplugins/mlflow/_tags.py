"""Every name the plugin writes where others read it: run tags, and the keys it adds to Flyte's context.

One module, so that what a run carries, and what a task tells the tasks it calls, can be read in one
place. The ``docs/`` pages explain what each tag is for.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTION_ID_TAG",
    "ACTION_NAME_TAG",
    "ATTEMPT_LIST_TAG",
    "ATTEMPT_NUMBER_TAG",
    "CONTEXT_PREFIX",
    "DOMAIN_TAG",
    "FAILED_RANK_TAG",
    "FLYTE_URL_TAG",
    "HOST_TAG",
    "LOCAL_RANK_TAG",
    "NODE_TAG",
    "NOTE_TAG",
    "PARENT_EXPERIMENT_KEY",
    "PARENT_RUN_KEY",
    "PARENT_TAG",
    "PROJECT_TAG",
    "PROVENANCE_TAGS",
    "RANK_TAG",
    "REPLACED_BY_TAG",
    "REPLACES_TAG",
    "RESOLVED_EXPERIMENTS_KEY",
    "ROOT_ACTION_KEY",
    "ROOT_TAG",
    "RUN_NAME_TAG",
    "SPAN_REPLAYED",
    "SPAN_RUN_ID",
    "TRACEPARENT_KEY",
    "TRACE_EXPERIMENT_KEY",
    "TRACE_TAGS",
    "TRACE_URI_KEY",
    "TRACING_KEY",
    "WORLD_SIZE_TAG",
    "tag_equals",
]

# --- MLflow's own tags that the plugin sets
PARENT_TAG: Final = "mlflow.parentRunId"
NOTE_TAG: Final = "mlflow.note.content"
"""The run's description, which the MLflow UI renders as Markdown."""

# --- where a run comes from in Flyte
RUN_NAME_TAG: Final = "flyte.run_name"
ACTION_NAME_TAG: Final = "flyte.action_name"
PROJECT_TAG: Final = "flyte.project"
DOMAIN_TAG: Final = "flyte.domain"
FLYTE_URL_TAG: Final = "flyte.url"
"""The console address of the Flyte action, when it is known."""
ATTEMPT_NUMBER_TAG: Final = "flyte.attempt"
"""The Flyte attempt number of the task that created the run."""
PROVENANCE_TAGS: Final = (RUN_NAME_TAG, ACTION_NAME_TAG, PROJECT_TAG, DOMAIN_TAG, FLYTE_URL_TAG)
"""What MLflow's other objects created inside a tracked call (logged models, traces) carry too."""

# --- retries and the sweep
ACTION_ID_TAG: Final = "flyte.action_id"
"""``project/domain/run_name/action_name`` of the Flyte action whose own run this is."""
ATTEMPT_LIST_TAG: Final = "flyte.attempts"
"""The attempts that wrote to the run, comma-separated, oldest first (``"0,1"``; ``"1.2"`` is Flyte
attempt 1 after two elastic restarts)."""
REPLACES_TAG: Final = "flyte.replaces"
REPLACED_BY_TAG: Final = "flyte.replaced_by"
ROOT_TAG: Final = "flyte.root_action"
"""The Flyte action of the root whose sweep covers the run."""

# --- distributed training
RANK_TAG: Final = "flyte.rank"
LOCAL_RANK_TAG: Final = "flyte.local_rank"
NODE_TAG: Final = "flyte.node"
"""The node's group rank (``GROUP_RANK``)."""
WORLD_SIZE_TAG: Final = "flyte.world_size"
FAILED_RANK_TAG: Final = "flyte.failed_rank"
HOST_TAG: Final = "flyte.node.{node}.host"
"""The host of node ``{node}`` in a job on several nodes."""

# --- keys in Flyte's custom_context
CONTEXT_PREFIX: Final = "mlflow_"
"""Every setting is stored as ``mlflow_<setting>``; the keys below share the prefix."""
PARENT_RUN_KEY: Final = CONTEXT_PREFIX + "parent_run_id"
PARENT_EXPERIMENT_KEY: Final = CONTEXT_PREFIX + "parent_experiment_id"
RESOLVED_EXPERIMENTS_KEY: Final = CONTEXT_PREFIX + "experiment_ids"
ROOT_ACTION_KEY: Final = CONTEXT_PREFIX + "root_action"
TRACING_KEY: Final = CONTEXT_PREFIX + "tracing"
"""The ``tracing`` setting's own key: ``"true"`` traces the task and every task below it."""
TRACEPARENT_KEY: Final = CONTEXT_PREFIX + "traceparent"
"""The W3C ``traceparent`` of the calling task's span, so a task in another pod joins its trace."""
TRACE_EXPERIMENT_KEY: Final = CONTEXT_PREFIX + "trace_experiment_id"
"""The experiment of the run's trace, where the spans of tasks in other pods go."""
TRACE_URI_KEY: Final = CONTEXT_PREFIX + "trace_tracking_uri"
"""The tracking server of the run's trace."""

# --- traces and spans (tracing=True)
TRACE_TAGS: Final = (RUN_NAME_TAG, PROJECT_TAG, DOMAIN_TAG, FLYTE_URL_TAG)
"""The Flyte run's identity on its trace."""
SPAN_RUN_ID: Final = "flyte.mlflow_run_id"
"""A tracked task's span: the id of the task's own MLflow run."""
SPAN_REPLAYED: Final = "flyte.replayed"
"""A ``flyte.trace`` step's span: ``true`` when a resumed run served the step from its durable log."""


def tag_equals(tag: str, value: str) -> str:
    """An MLflow search filter term matching runs whose ``tag`` is exactly ``value``."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"tags.`{tag}` = '{escaped}'"
