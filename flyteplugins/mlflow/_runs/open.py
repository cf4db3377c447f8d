"""Opening the run of one tracked call as its plan says: share, resume or create, in at most one request."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import attrs

from flyteplugins.mlflow._errors import TrackingRequestError
from flyteplugins.mlflow._patches import process_state, provenance
from flyteplugins.mlflow._plan.plan import Plan
from flyteplugins.mlflow._runs import attempts, sigterm
from flyteplugins.mlflow._runs.finish import RUNNING, now_ms
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY, RESOLVED_EXPERIMENTS_KEY
from flyteplugins.mlflow._transport.client import client_for, experiment_id
from mlflow.entities import Run
from mlflow.tracking.fluent import ActiveRun

__all__ = ["Opened", "begin"]


@attrs.frozen
class Opened:
    """A run that a tracked call is using, and what the tasks it calls are told about it."""

    plan: Plan
    run: ActiveRun
    owned: bool
    children: Mapping[str, str]
    monitor: Any = None  # this node's system-metrics monitor (see _distributed.system_metrics)
    signal_token: int | None = None  # from sigterm.register: SIGTERM marks an owned run KILLED


@functools.lru_cache(maxsize=1)
def _source_tags() -> Mapping[str, str]:
    """MLflow's default run tags (user, source, git commit), worked out once per process."""
    return {k: str(v) for k, v in provenance.context_tags().items()}


def begin(p: Plan, local_run: ActiveRun | None) -> Opened:
    """Share, resume or create the planned run. Blocking; runs off the event loop in async tasks.

    Args:
        p: the plan.
        local_run: the run of the calling task when it runs in this process (shared without a request).

    Raises:
        MlflowTrackingError: the tracking server failed or was unreachable, or holds the global state
            for another tracking URI.
    """
    client = client_for(p.tracking_uri, p.policy)
    process_state.hold(p.tracking_uri, p.autolog, p.async_logging)
    try:
        known = dict(p.resolved_experiments)
        if p.opening == "share":
            assert p.run_id is not None
            if local_run is not None and local_run.info.run_id == p.run_id:
                run = local_run
            else:
                run = ActiveRun(client.get_run(p.run_id))
        elif p.opening == "resume":
            assert p.run_id is not None
            found = client.get_run(p.run_id)
            if found.info.lifecycle_stage == "deleted":
                msg = (
                    f"run_id {p.run_id!r} names a deleted run; restore it in the MLflow UI or choose another"
                )
                raise TrackingRequestError(msg)
            client.set_status(p.run_id, RUNNING, None)
            if p.tags:
                client.set_tags(p.run_id, p.tags)
            run = ActiveRun(found)
        else:
            experiment = p.experiment_id
            if experiment is None:
                experiment = experiment_id(client, p.experiment_name, known) if p.experiment_name else "0"
                if p.experiment_name:
                    known[p.experiment_name] = experiment
            tags = {**_source_tags(), **p.tags}
            run_name = p.run_name

            def create(with_tags: Mapping[str, str]) -> Run:
                return client.create_run(experiment, run_name, with_tags, now_ms())

            if p.retry is None:
                run = ActiveRun(create(tags))
            else:
                run = ActiveRun(attempts.open_retry(client, p.retry, experiment, tags, create, now_ms))
        process_state.use_experiment(run.info.experiment_id)
    except BaseException:
        process_state.release(p.autolog, p.async_logging)
        raise
    children = {
        PARENT_RUN_KEY: run.info.run_id,
        PARENT_EXPERIMENT_KEY: run.info.experiment_id,
        **p.passed_down,
    }
    if known != dict(p.resolved_experiments):
        children[RESOLVED_EXPERIMENTS_KEY] = json.dumps(known, sort_keys=True)
    owned = p.opening != "share"
    token = sigterm.register(run.info.run_id, client, p.journal_dir) if owned else None
    return Opened(plan=p, run=run, owned=owned, children=children, signal_token=token)
