"""Flyte provenance on what MLflow creates inside a tracked call: logged models above all.

A model logged in a tracked task, by hand (``mlflow.sklearn.log_model``) or by autologging, is a
``LoggedModel`` of its own, with tags of its own. MLflow |version| creates it in
``mlflow.tracking.fluent._create_logged_model``, which first asks its run-context registry
(``mlflow.tracking.context.registry.resolve_tags``) for the tags of the current context. So the
plugin's tags ride on MLflow's own create request: the provenance costs no request.

What is installed, and when
---------------------------
One :class:`FlyteProvenance` provider goes into MLflow's registry
(``registry._run_context_provider_registry``) when the first tracked call of the process enters
:func:`tagged`, and exactly that object is taken out again when the last one leaves. No pip entry
point is registered: a process that tracks nothing never imports the plugin, and never sees it.
Meanwhile the provider is in context only inside a tracked call of the running Flyte task (the
same owner check as :mod:`~flyteplugins.mlflow._state`), and its tags are that call's:
``flyte.run_name``, ``flyte.action_name``, ``flyte.project``, ``flyte.domain``, and ``flyte.url``
where the run has a console address. Code outside a tracked call (untracked tasks, MLflow's own
threads that do not copy the context) gets none.

Everything else that asks the same registry inside a tracked call gets the same tags, as
provenance: a run the user starts by hand (``mlflow.start_run(nested=True)``), the code source of
an autologged dataset, a trace's environment metadata (MLflow keeps only its allow-listed keys
there). The plugin's own default run tags (``_lifecycle._source_tags``, worked out once per process)
are resolved by :func:`context_tags`, without the provider, so they never hold one task's provenance.

On import, and again on each install, the registry is checked; if it no longer looks as expected,
this fails with the MLflow version in the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

import mlflow
from flyteplugins.mlflow import _runstack
from flyteplugins.mlflow._backlink import FLYTE_URL_TAG
from mlflow.tracking import fluent
from mlflow.tracking.context import registry
from mlflow.tracking.context.abstract_context import RunContextProvider

__all__ = [
    "IGNORE",
    "PROVENANCE_TAGS",
    "FlyteProvenance",
    "context_tags",
    "installed",
    "provenance",
    "tagged",
]

__doc__ = (__doc__ or "").replace("|version|", mlflow.__version__)

logger = logging.getLogger("flyteplugins.mlflow")

PROVENANCE_TAGS: Final = (
    "flyte.run_name",
    "flyte.action_name",
    "flyte.project",
    "flyte.domain",
    FLYTE_URL_TAG,
)
"""The tags a tracked call's run carries that MLflow's other objects created inside it get too."""


def provenance(tags: Mapping[str, str]) -> dict[str, str]:
    """The provenance tags (:data:`PROVENANCE_TAGS`) among a run's planned ``tags``."""
    return {k: tags[k] for k in PROVENANCE_TAGS if tags.get(k)}


class _Scope:
    """One tracked call's provenance tags, and the Flyte task they belong to."""

    __slots__ = ("owner", "tags")

    def __init__(self, owner: object, tags: Mapping[str, str]) -> None:
        self.owner = owner
        self.tags = dict(tags)


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "flyteplugins_mlflow_provenance", default=None
)


def _current() -> _Scope | None:
    scope = _SCOPE.get()
    if scope is None or (scope.owner is not None and scope.owner != _runstack.owner()):
        return None
    return scope


class FlyteProvenance(RunContextProvider):
    """MLflow run-context provider: the running tracked call's Flyte provenance tags, and only there."""

    def in_context(self) -> bool:
        """Whether a tracked call of the running task is in scope here."""
        return _current() is not None

    def tags(self) -> dict[str, str]:
        """The tracked call's provenance tags (empty outside one)."""
        scope = _current()
        return {} if scope is None else dict(scope.tags)


IGNORE: Final[list[Any]] = [FlyteProvenance]  # classes: MLflow's annotation says instances, it means classes
"""Pass as ``resolve_tags(ignore=IGNORE)`` for MLflow's context tags without any task's provenance."""


def context_tags() -> dict[str, Any]:
    """MLflow's own context tags here (user, source, git commit), without any tracked call's provenance."""
    resolved: dict[str, Any] = registry.resolve_tags({}, ignore=IGNORE)
    return resolved


def _unsupported(reason: str) -> RuntimeError:
    return RuntimeError(
        f"flyteplugins-mlflow cannot tag logged models with their Flyte provenance with mlflow "
        f"{mlflow.__version__}: {reason}. Install an mlflow version this plugin supports "
        "(see its pyproject.toml)."
    )


def _providers() -> list[Any]:
    """MLflow's list of registered providers, checked to look as this module expects."""
    found = getattr(registry, "_run_context_provider_registry", None)
    if not isinstance(found, registry.RunContextProviderRegistry):
        raise _unsupported(
            "registry._run_context_provider_registry is no longer a RunContextProviderRegistry"
        )
    providers = vars(found).get("_registry")
    if not isinstance(providers, list) or list(iter(found)) != providers:
        raise _unsupported("RunContextProviderRegistry no longer keeps its providers in the _registry list")
    return providers


def _check() -> None:
    """Fail unless MLflow still resolves context tags through the registry this module adds to."""
    _providers()
    if getattr(fluent, "context_registry", None) is not registry:
        raise _unsupported("mlflow.tracking.fluent no longer resolves tags through context.registry")
    params = inspect.signature(registry.resolve_tags).parameters
    if "tags" not in params or "ignore" not in params:
        raise _unsupported("context.registry.resolve_tags no longer takes tags and ignore")


_lock = threading.Lock()
_users = 0
_provider: FlyteProvenance | None = None


def _install() -> FlyteProvenance:
    _check()
    ours = FlyteProvenance()
    providers = _providers()
    providers.append(ours)
    probe = {PROVENANCE_TAGS[0]: "probe"}
    token = _SCOPE.set(_Scope(None, probe))
    try:
        seen = registry.resolve_tags({})
        ignored = registry.resolve_tags({}, ignore=IGNORE)
    finally:
        _SCOPE.reset(token)
    if seen.get(PROVENANCE_TAGS[0]) != "probe" or PROVENANCE_TAGS[0] in ignored:
        _remove(ours)
        raise _unsupported("context.registry.resolve_tags no longer asks the registered providers")
    return ours


def _remove(ours: FlyteProvenance) -> None:
    """Take exactly ``ours`` out of MLflow's registry, leaving every other provider where it is."""
    providers = vars(registry._run_context_provider_registry).get("_registry")
    found = [i for i, p in enumerate(providers or []) if p is ours]
    if providers is None or not found:
        logger.warning("MLflow's run-context registry was replaced while tracked tasks ran; left as it is")
        return
    del providers[found[0]]


def installed() -> bool:
    """Whether the provider is in MLflow's registry (while tracked calls run; for tests and diagnostics)."""
    return _provider is not None


@contextlib.contextmanager
def tagged(tags: Mapping[str, str], owner: object) -> Iterator[None]:
    """Give what MLflow creates in the body of one tracked call the call's Flyte provenance tags.

    Args:
        tags: the run's planned tags; only :data:`PROVENANCE_TAGS` are used. Without any (a tracked
            function outside Flyte) nothing is installed.
        owner: the running Flyte task (as for :func:`flyteplugins.mlflow._state.kept`); code of the
            same context that runs for another task gets no tags.

    Raises:
        RuntimeError: MLflow's run-context registry no longer looks as expected (on the first call).
    """
    global _users, _provider
    chosen = provenance(tags)
    if not chosen:
        yield
        return
    with _lock:
        if not _users:
            _provider = _install()
        _users += 1
    token = _SCOPE.set(_Scope(owner, chosen))
    try:
        yield
    finally:
        _SCOPE.reset(token)
        with _lock:
            _users -= 1
            if not _users and _provider is not None:
                _remove(_provider)
                _provider = None


_check()
