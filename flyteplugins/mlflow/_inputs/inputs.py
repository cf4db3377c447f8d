"""A tracked call's inputs as its run's params and datasets (``log_inputs=True``).

:func:`inputs_of` is the pure part: it turns each input into params and datasets by the rules of
``docs/inputs.md`` (secrets and anything without a faithful text are skipped). :func:`record` sends
them: params in one ``log-batch`` per 100 (or into the queue), datasets in one ``log-inputs``, long
values in one JSON artifact.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import inspect
import itertools
import json
import logging
import os
import pathlib
import re
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import flyte
import pydantic
from flyte.io import DataFrame, Dir, File

from flyteplugins.mlflow._errors import MlflowTrackingError, TrackingRequestError
from flyteplugins.mlflow._patches import process_state
from flyteplugins.mlflow._plan.plan import Plan
from flyteplugins.mlflow._settings.enums import OnTrackingError
from flyteplugins.mlflow._transport.client import client_for
from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking.fluent import ActiveRun
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import (
    MAX_DATASETS_PER_BATCH,
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    path_not_unique,
    validate_param_and_metric_name,
)

__all__ = [
    "LONG_VALUES_ARTIFACT",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_KEY",
    "MAX_VALUE",
    "Inputs",
    "inputs_of",
    "record",
    "values_of",
]

logger = logging.getLogger("flyteplugins.mlflow")

MAX_DEPTH: Final = 4
"""The most parts a flattened key has: ``input.a.b.c``."""
MAX_ITEMS: Final = 32
"""The longest list or tuple of scalars recorded as a param."""
MAX_KEY: Final = MAX_ENTITY_KEY_LENGTH
"""MLflow's limit on a param's name (250 characters)."""
MAX_VALUE: Final = MAX_PARAM_VAL_LENGTH
"""MLflow's limit on a param's value (6,000 characters)."""
LONG_VALUES_ARTIFACT: Final = "flyte-inputs/long-values.json"
"""The artifact that holds the full text of every value cut to fit, as a JSON object by param name."""
DATA_CONTEXT: Final = "input"

_DATA = (File, Dir, DataFrame)
_SECRETS = (flyte.Secret, pydantic.SecretStr, pydantic.SecretBytes)
_CREDENTIAL_WORDS: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "auth",
    }
)
_CREDENTIAL_PAIRS: Final = frozenset({("api", "key"), ("private", "key"), ("access", "key")})
_WORDS: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


@attrs.frozen
class Inputs:
    """What a call's inputs become: params (name to value), the full text of values cut, datasets."""

    params: dict[str, str] = attrs.field(factory=dict)
    long_values: dict[str, str] = attrs.field(factory=dict)
    datasets: list[DatasetInput] = attrs.field(factory=list)


def looks_like_credential(key: str) -> bool:
    """Whether a part of ``key`` reads as a credential's name (``db.password``, ``hfToken``, ``api_key``)."""
    words = [w.lower() for w in _WORDS.findall(key)]
    return any(w in _CREDENTIAL_WORDS for w in words) or any(
        p in _CREDENTIAL_PAIRS for p in itertools.pairwise(words)
    )


def _skip(key: str, why: str) -> None:
    logger.debug("log_inputs: input %r is not recorded: %s", key, why)


def _scalar(value: object) -> str | None:
    """The param text of a scalar, or ``None`` for anything else."""
    if isinstance(value, enum.Enum):
        return _scalar(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value.total_seconds())
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return None


def _fields(value: object) -> Mapping[Any, Any] | None:
    """The named parts of a dataclass, a pydantic model or a mapping; ``None`` for anything else."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, pydantic.BaseModel):
        return {name: getattr(value, name) for name in type(value).model_fields}
    return None


def _uri(value: File[Any] | Dir[Any] | DataFrame) -> str | None:
    return value.uri if isinstance(value, DataFrame) else value.path


def _dataset(key: str, value: File[Any] | Dir[Any] | DataFrame) -> DatasetInput | None:
    uri = _uri(value)
    if not uri:
        return None
    scheme = urlsplit(uri).scheme
    digest = value.hash[:36] if value.hash else hashlib.sha256(uri.encode()).hexdigest()[:16]
    profile = {"flyte_type": type(value).__name__}
    fmt = getattr(value, "format", None)  # a Dir's or a DataFrame's; a File has none
    if fmt:
        profile["format"] = str(fmt)
    dataset = Dataset(
        name=key,
        digest=digest,
        source_type=scheme if scheme and scheme != "file" and len(scheme) > 1 else "local",
        source=json.dumps({"uri": uri}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATA_CONTEXT)])


class _Walk:
    def __init__(self) -> None:
        self.out = Inputs()

    def param(self, key: str, text: str) -> None:
        if len(key) > MAX_KEY or not validate_param_and_metric_name(key) or path_not_unique(key):
            _skip(
                key,
                f"MLflow refuses it as a param name (at most {MAX_KEY} letters, digits, _ - . / : or spaces)",
            )
            return
        if key in self.out.params:
            _skip(key, "another input was recorded under the same name")
            return
        if len(text) > MAX_VALUE:
            marker = f"...[cut: {len(text)} characters; the full value is in {LONG_VALUES_ARTIFACT}]"
            self.out.long_values[key] = text
            text = text[: MAX_VALUE - len(marker)] + marker
        self.out.params[key] = text

    def data(self, key: str, value: File[Any] | Dir[Any] | DataFrame) -> None:
        dataset = _dataset(key, value)
        if dataset is None:
            _skip(key, f"the {type(value).__name__} has no URI yet")
        else:
            self.out.datasets.append(dataset)

    def visit(self, key: str, value: object, hint: object = None, depth: int = 1) -> None:
        if looks_like_credential(key.rsplit(".", 1)[-1]) or _is_secret(value, hint):
            _skip(key, "it looks like a secret")
            return
        if isinstance(value, _DATA):
            self.data(key, value)
            return
        text = _scalar(value)
        if text is not None:
            self.param(key, text)
            return
        if isinstance(value, (list, tuple)):
            self.sequence(key, value)
            return
        fields = _fields(value)
        if fields is None:
            _skip(key, f"a {type(value).__name__} has no faithful text")
        elif depth >= MAX_DEPTH:
            _skip(key, f"it is nested deeper than {MAX_DEPTH} levels")
        else:
            for name, item in fields.items():
                if isinstance(name, (str, int)) and not isinstance(name, bool):
                    self.visit(f"{key}.{name}", item, None, depth + 1)
                else:
                    _skip(f"{key}[{name!r}]", f"a {type(name).__name__} key is not a name")

    def sequence(self, key: str, items: list[Any] | tuple[Any, ...]) -> None:
        if items and all(isinstance(item, _DATA) for item in items):
            for i, item in enumerate(items):
                self.data(f"{key}.{i}", item)
            return
        if len(items) > MAX_ITEMS:
            _skip(
                key,
                f"{len(items)} items (more than {MAX_ITEMS}) are data, not a param",
            )
            return
        if any(_is_secret(item, None) for item in items):
            _skip(key, "it holds a secret")
            return
        texts = [_scalar(item) for item in items]
        if any(text is None for text in texts):
            _skip(key, f"a {type(items).__name__} holding other things than scalars has no faithful text")
            return
        native = [
            item
            if item is None or (isinstance(item, (int, float)) and not isinstance(item, enum.Enum))
            else text
            for item, text in zip(items, texts, strict=True)
        ]
        self.param(key, str(native if isinstance(items, list) else tuple(native)))


def _is_secret(value: object, hint: object) -> bool:
    if isinstance(value, _SECRETS):
        return True
    return hint is not None and any(h is flyte.Secret for h in (hint, *typing.get_args(hint)))


def inputs_of(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Inputs:
    """What the call ``func(*args, **kwargs)``'s inputs become, by the module's rules.

    Inputs are taken in the order of ``func``'s signature, defaults included; ``self`` and ``cls`` of
    a method, and ``*args`` and ``**kwargs`` parameters, are not inputs.
    """
    walk = _Walk()
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        logger.debug("log_inputs: the call's arguments do not fit %r's signature (%s)", func, e)
        return walk.out
    bound.apply_defaults()
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that cannot be resolved: go by the values alone
        hints = {}
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for name, value in bound.arguments.items():
        if name in ("self", "cls") or bound.signature.parameters[name].kind in kinds:
            continue
        walk.visit(name, value, hints.get(name))
    return walk.out


def values_of(named: Mapping[str, object]) -> dict[str, str]:
    """Named values (a task's inputs or outputs) as texts, by the module's rules: flattened, cut to
    MLflow's limit, secrets left out; a file, directory or data frame gives its URI."""
    walk = _Walk()
    for name, value in named.items():
        walk.visit(name, value)
    texts = dict(walk.out.params)
    for dataset in walk.out.datasets:
        texts[dataset.dataset.name] = json.loads(dataset.dataset.source)["uri"]
    return texts


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upload_long_values(run: ActiveRun, long_values: Mapping[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="flyteplugins-mlflow-") as tmp:
        directory, name = os.path.split(LONG_VALUES_ARTIFACT)
        path = os.path.join(tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(long_values, f, indent=1, sort_keys=True)
        try:
            get_artifact_repository(run.info.artifact_uri).log_artifact(path, directory)
        except Exception as e:
            msg = f"the full values of long inputs could not be stored as {LONG_VALUES_ARTIFACT}: {e}"
            raise TrackingRequestError(msg) from e


def send(p: Plan, run: ActiveRun, inputs: Inputs) -> None:
    """Store ``inputs`` on ``run``: params, datasets, then the long values' artifact.

    Raises:
        MlflowTrackingError: the tracking client or the artifact store refused or failed.
    """
    run_id = run.info.run_id
    client = client_for(p.tracking_uri, p.policy)
    params = [Param(k, v) for k, v in inputs.params.items()]
    queue = process_state.queue() if p.async_logging else None
    if params and queue is not None:
        queue.log_batch_async(run_id, params=params, tags=[], metrics=[])
    else:
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, [], chunk, [])
    for datasets in _chunks(inputs.datasets, MAX_DATASETS_PER_BATCH):
        client.log_inputs(run_id, datasets)
    if inputs.long_values:
        _upload_long_values(run, inputs.long_values)


def record(
    p: Plan, run: ActiveRun, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Record the call's inputs on the run it owns; under ``on_tracking_error="warn"`` a failure is a warning.

    Raises:
        MlflowTrackingError: the inputs could not be stored, under ``on_tracking_error="raise"``.
    """
    try:
        send(p, run, inputs_of(func, args, kwargs))
    except MlflowTrackingError as e:
        if p.on_error is OnTrackingError.RAISE:
            raise
        logger.warning("MLflow run %s: the task's inputs could not be recorded: %s", run.info.run_id, e)
