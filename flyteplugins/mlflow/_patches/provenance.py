"""Flyte provenance on what MLflow creates inside a tracked call: logged models above all.

MLflow creates a logged model after asking its run-context registry for the current context's tags,
so one provider added to that registry puts the call's Flyte tags on MLflow's own create request: the
provenance costs no request. The provider answers only inside a tracked call of the running task.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, Final

from flyteplugins.mlflow._patches.current import TrackedCall, current, entered
from flyteplugins.mlflow._patches.patch import Patch, Undo
from flyteplugins.mlflow._tags import PROVENANCE_TAGS
from mlflow.tracking import fluent
from mlflow.tracking.context import registry
from mlflow.tracking.context.abstract_context import RunContextProvider

__all__ = ["IGNORE", "PATCH", "FlyteProvenance", "context_tags", "provenance"]


logger = logging.getLogger("flyteplugins.mlflow")


def provenance(tags: Mapping[str, str]) -> dict[str, str]:
    """The provenance tags (:data:`PROVENANCE_TAGS`) among a run's planned ``tags``."""
    return {k: tags[k] for k in PROVENANCE_TAGS if tags.get(k)}


def _tags() -> Mapping[str, str]:
    """The provenance of the running task's tracked call here (empty outside one)."""
    call = current()
    return {} if call is None else call.provenance


class FlyteProvenance(RunContextProvider):
    """MLflow run-context provider: the running tracked call's Flyte provenance tags, and only there."""

    def in_context(self) -> bool:
        """Whether a tracked call of the running task is in scope here."""
        return bool(_tags())

    def tags(self) -> dict[str, str]:
        """The tracked call's provenance tags (empty outside one)."""
        return dict(_tags())


IGNORE: Final[list[Any]] = [FlyteProvenance]  # classes: MLflow's annotation says instances, it means classes
"""Pass as ``resolve_tags(ignore=IGNORE)`` for MLflow's context tags without any task's provenance."""


def context_tags() -> dict[str, Any]:
    """MLflow's own context tags here (user, source, git commit), without any tracked call's provenance."""
    resolved: dict[str, Any] = registry.resolve_tags({}, ignore=IGNORE)
    return resolved


def _providers() -> list[Any]:
    """MLflow's list of registered providers, checked to look as this module expects."""
    found = getattr(registry, "_run_context_provider_registry", None)
    if not isinstance(found, registry.RunContextProviderRegistry):
        raise PATCH.error("registry._run_context_provider_registry is no longer a RunContextProviderRegistry")
    providers = vars(found).get("_registry")
    if not isinstance(providers, list) or list(iter(found)) != providers:
        raise PATCH.error("RunContextProviderRegistry no longer keeps its providers in the _registry list")
    return providers


def _check() -> None:
    """Fail unless MLflow still resolves context tags through the registry this module adds to."""
    _providers()
    if getattr(fluent, "context_registry", None) is not registry:
        raise PATCH.error("mlflow.tracking.fluent no longer resolves tags through context.registry")
    params = inspect.signature(registry.resolve_tags).parameters
    if "tags" not in params or "ignore" not in params:
        raise PATCH.error("context.registry.resolve_tags no longer takes tags and ignore")


def _install(undo: Undo, _: None) -> None:
    _check()
    ours = FlyteProvenance()
    _providers().append(ours)
    undo.then(lambda: _remove(ours))
    probe = {PROVENANCE_TAGS[0]: "probe"}
    with entered(TrackedCall(owner=None, provenance=probe)):
        seen = registry.resolve_tags({})
        ignored = registry.resolve_tags({}, ignore=IGNORE)
    if seen.get(PROVENANCE_TAGS[0]) != "probe" or PROVENANCE_TAGS[0] in ignored:
        raise PATCH.error("context.registry.resolve_tags no longer asks the registered providers")


def _remove(ours: FlyteProvenance) -> None:
    """Take exactly ``ours`` out of MLflow's registry, leaving every other provider where it is."""
    providers = vars(registry._run_context_provider_registry).get("_registry")
    found = [i for i, p in enumerate(providers or []) if p is ours]
    if providers is None or not found:
        logger.warning("MLflow's run-context registry was replaced while tracked tasks ran; left as it is")
        return
    del providers[found[0]]


PATCH: Patch[None] = Patch("tag logged models with their Flyte provenance", _install)
"""The provider, in MLflow's registry while tracked calls with provenance run."""
