"""One logging call's values, their JSON form on disk, and the one packer of ``log-batch`` requests.

The queue and the journal both send values in as few ``log-batch`` requests as MLflow's own limits
allow (imported from MLflow, so they follow it); a param or tag key never appears twice in one
request, so values given one after another are stored one after another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

__all__ = ["MAX_ENTITIES", "Batch", "Values", "pack", "values_from_json", "values_json"]

MAX_ENTITIES: Final = MAX_ENTITIES_PER_BATCH
"""The most metrics, params and tags one ``log-batch`` request carries."""

Values = tuple[list[Metric], list[Param], list[RunTag]]
"""One logging call's values: metrics, params and tags."""


class Batch:
    """One ``log-batch`` request being filled, call by call."""

    __slots__ = ("calls", "param_keys", "params", "size", "tag_keys", "tags")

    def __init__(self) -> None:
        self.calls = 0
        self.size = 0
        self.params = 0
        self.tags = 0
        self.param_keys: set[str] = set()
        self.tag_keys: set[str] = set()

    def takes(self, values: Values) -> bool:
        """Whether one more call's values fit; an empty batch takes any call."""
        metrics, params, tags = values
        if not self.calls:
            return True
        return (
            self.size + len(metrics) + len(params) + len(tags) <= MAX_ENTITIES_PER_BATCH
            and self.params + len(params) <= MAX_PARAMS_TAGS_PER_BATCH
            and self.tags + len(tags) <= MAX_PARAMS_TAGS_PER_BATCH
            # A key twice in one request is refused (params) or ambiguous (tags): as separate
            # calls they are stored one after the other, so they go in separate requests.
            and self.param_keys.isdisjoint(p.key for p in params)
            and self.tag_keys.isdisjoint(t.key for t in tags)
        )

    def add(self, values: Values) -> None:
        """Count one call's values in."""
        metrics, params, tags = values
        self.calls += 1
        self.size += len(metrics) + len(params) + len(tags)
        self.params += len(params)
        self.tags += len(tags)
        self.param_keys.update(p.key for p in params)
        self.tag_keys.update(t.key for t in tags)


def pack(calls: Iterable[Values]) -> Iterator[Values]:
    """Consecutive calls merged into as few ``log-batch`` requests as :class:`Batch` allows."""
    batch = Batch()
    metrics: list[Metric] = []
    params: list[Param] = []
    tags: list[RunTag] = []
    for values in calls:
        if not batch.takes(values):
            yield metrics, params, tags
            batch, metrics, params, tags = Batch(), [], [], []
        batch.add(values)
        metrics, params, tags = [*metrics, *values[0]], [*params, *values[1]], [*tags, *values[2]]
    if batch.size:
        yield metrics, params, tags


def values_json(values: Values) -> dict[str, Any]:
    """One call's values as plain JSON (non-finite metric values stay floats: Python's JSON keeps them)."""
    metrics, params, tags = values
    return {
        "metrics": [
            [
                m.key,
                m.value,
                m.timestamp,
                m.step,
                *(getattr(m, f, None) for f in ("model_id", "dataset_name", "dataset_digest")),
            ]
            for m in metrics
        ],
        "params": [[p.key, p.value] for p in params],
        "tags": [[t.key, t.value] for t in tags],
    }


def values_from_json(body: dict[str, Any]) -> Values:
    """The values :func:`values_json` wrote."""
    metrics = [
        Metric(key, value, timestamp, step, model_id=model, dataset_name=dataset, dataset_digest=digest)
        for key, value, timestamp, step, model, dataset, digest in body.get("metrics", [])
    ]
    params = [Param(key, value) for key, value in body.get("params", [])]
    tags = [RunTag(key, value) for key, value in body.get("tags", [])]
    return metrics, params, tags
