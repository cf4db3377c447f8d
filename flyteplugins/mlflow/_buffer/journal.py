"""The journal: what could not reach a tracking server that stayed away, kept until it can be sent.

:func:`write` keeps a run's unsent values and final status, in order, where they outlive the pod;
:func:`replay` (``python -m flyteplugins.mlflow replay``) sends them, and sending twice changes
nothing. The format and where it goes are in ``docs/design.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from flyteplugins.mlflow._buffer.values import Values, pack, values_from_json, values_json
from flyteplugins.mlflow._transport.client import client_for

__all__ = ["FORMAT", "Journal", "Replayed", "read", "replay", "write"]

logger = logging.getLogger("flyteplugins.mlflow")

FORMAT: Final = "flyteplugins-mlflow-journal/1"
FOLDER: Final = "mlflow-journal"

_T = TypeVar("_T")


def _run_sync(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run one of Flyte's storage coroutines to the end from sync code, whatever loop this thread has."""
    result: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=target, name="flyteplugins-mlflow-journal")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result[0]


def _is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def write(
    tracking_uri: str, run_id: str, batches: Sequence[Values], status: str, end_ms: int, prefix: str | None
) -> str:
    """Write a journal for one run: its unsent ``batches``, then its final ``status``.

    Args:
        prefix: the task's raw-data prefix (local or in Flyte's store), or ``None`` outside a task.

    Returns:
        Where the journal is: the remote location, or the local file if there is none or the upload failed.
    """
    name = f"{run_id}-{end_ms}.jsonl"
    local_root = Path(tempfile.gettempdir()) / "flyteplugins-mlflow-journal"
    if prefix is not None and not _is_remote(prefix):
        local_root = Path(prefix.removeprefix("file://")) / FOLDER
    local_root.mkdir(parents=True, exist_ok=True)
    path = local_root / name
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"format": FORMAT, "tracking_uri": tracking_uri, "run_id": run_id}) + "\n")
        for values in batches:
            f.write(json.dumps({"kind": "values", **values_json(values)}) + "\n")
        f.write(json.dumps({"kind": "status", "status": status, "end_time": end_ms}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if prefix is None or not _is_remote(prefix):
        return str(path)
    import flyte.storage

    remote = flyte.storage.join(prefix, FOLDER, name)
    try:
        _run_sync(lambda: flyte.storage.put(str(path), remote))
    except Exception as e:
        logger.warning(
            "MLflow journal: could not upload %s to %s (%s); it stays on local disk", path, remote, e
        )
        return str(path)
    return remote


@attrs.frozen
class Journal:
    """A journal as read back: the server and run it is for, its values in order, and the final status."""

    tracking_uri: str
    run_id: str
    batches: tuple[Values, ...]
    status: str | None
    end_ms: int | None


def read(location: str) -> Journal:
    """Read a journal from a local path or, through Flyte's storage layer, from a remote location.

    Raises:
        ValueError: the file is not a journal of this format.
        FileNotFoundError: there is nothing at ``location``.
    """
    if _is_remote(location):
        import flyte.storage

        local = Path(tempfile.mkdtemp(prefix="flyteplugins-mlflow-replay-")) / "journal.jsonl"
        _run_sync(lambda: flyte.storage.get(location, str(local)))
        text = local.read_text(encoding="utf-8")
    else:
        text = Path(location.removeprefix("file://")).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        msg = f"{location} is not an MLflow journal of this plugin (its first line must name {FORMAT!r})"
        raise ValueError(msg)
    head = lines[0]
    batches = tuple(values_from_json(line) for line in lines[1:] if line.get("kind") == "values")
    ends = [line for line in lines[1:] if line.get("kind") == "status"]
    return Journal(
        tracking_uri=str(head["tracking_uri"]),
        run_id=str(head["run_id"]),
        batches=batches,
        status=str(ends[-1]["status"]) if ends else None,
        end_ms=int(ends[-1]["end_time"]) if ends else None,
    )


@attrs.frozen
class Replayed:
    """What a replay sent: the run, how many metric points, params and tags, and the status set."""

    run_id: str
    points: int
    params: int
    tags: int
    requests: int
    status: str | None


def replay(location: str, tracking_uri: str | None = None) -> Replayed:
    """Send a journal to its tracking server (or ``tracking_uri``): its values in order, then the status.

    Raises:
        MlflowTrackingError: the server could not be reached or refused a request; the journal is kept.
    """
    journal = read(location)
    client = client_for(tracking_uri or journal.tracking_uri)
    client.get_run(journal.run_id)  # the run is there, and the server answers
    sent = 0
    points = params = tags = 0
    for metrics, p, t in pack(journal.batches):
        client.log_batch(journal.run_id, metrics, p, t)
        sent += 1
        points, params, tags = points + len(metrics), params + len(p), tags + len(t)
    if journal.status is not None:
        client.set_status(journal.run_id, journal.status, journal.end_ms)
        sent += 1
    return Replayed(journal.run_id, points, params, tags, sent, journal.status)
