"""The settings that a tracker and a config share, each checked when it is set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from flyteplugins.mlflow._settings import checks
from flyteplugins.mlflow._settings.enums import (
    OnRetry,
    OnTrackingError,
    RankScope,
    ReportGoal,
    RunMode,
    to_on_retry,
    to_on_tracking_error,
    to_rank_scope,
    to_report_goal,
    to_run_mode,
)

__all__ = ["FIELDS", "MlflowTrackingSettings"]


@attrs.frozen(kw_only=True, slots=False)
class MlflowTrackingSettings:
    """The settings shared by :class:`MlflowConfig` and :class:`~flyteplugins.mlflow.MlflowRun`.

    Every field's "unset" value (``None``, ``False``, ``AUTO``, empty mapping) means "no preference":
    the next level of configuration decides. See the user guide for the precedence.
    """

    run_mode: RunMode = attrs.field(default=RunMode.AUTO, converter=to_run_mode)
    tracking_uri: str | None = attrs.field(default=None, validator=checks.valid_tracking_uri)
    experiment_name: str | None = attrs.field(default=None, validator=checks.valid_optional_text)
    experiment_id: str | None = attrs.field(default=None, validator=checks.valid_optional_text)
    run_name: str | None = attrs.field(default=None, validator=checks.valid_optional_text)
    run_id: str | None = attrs.field(default=None, validator=checks.valid_optional_text)
    tags: Mapping[str, str] = attrs.field(default=None, converter=checks.to_tags)
    autolog: bool = attrs.field(default=False, validator=checks.valid_bool)
    framework: str | None = attrs.field(default=None, validator=checks.valid_framework)
    log_models: bool | None = attrs.field(default=None, validator=checks.valid_optional_bool)
    log_datasets: bool | None = attrs.field(default=None, validator=checks.valid_optional_bool)
    autolog_kwargs: Mapping[str, Any] = attrs.field(default=None, converter=checks.to_autolog_kwargs)
    link_host: str | None = attrs.field(default=None, validator=checks.valid_tracking_uri)
    link_template: str | None = attrs.field(default=None, validator=checks.valid_link_template)
    own_link_template: str | None = attrs.field(default=None, validator=checks.valid_own_link_template)
    flyte_console_url: str | None = attrs.field(default=None, validator=checks.valid_console_url)
    run_kwargs: Mapping[str, Any] = attrs.field(default=None, converter=checks.to_run_kwargs)
    on_tracking_error: OnTrackingError = attrs.field(
        default=OnTrackingError.RAISE, converter=to_on_tracking_error
    )
    async_logging: bool = attrs.field(default=False, validator=checks.valid_bool)
    on_retry: OnRetry = attrs.field(default=OnRetry.NEW, converter=to_on_retry)
    request_timeout: float | None = attrs.field(default=None, validator=checks.valid_positive_float)
    request_retries: int | None = attrs.field(default=None, validator=checks.valid_retries)
    outage_timeout: float | None = attrs.field(default=None, validator=checks.valid_outage_seconds)
    report: bool = attrs.field(default=False, validator=checks.valid_bool)
    report_metric: str | None = attrs.field(default=None, validator=checks.valid_metric_name)
    report_goal: ReportGoal | None = attrs.field(default=None, converter=to_report_goal)
    rank_scope: RankScope = attrs.field(default=RankScope.GLOBAL, converter=to_rank_scope)
    log_inputs: bool = attrs.field(default=False, validator=checks.valid_bool)
    tracing: bool = attrs.field(default=False, validator=checks.valid_bool)

    def __attrs_post_init__(self) -> None:
        if self.experiment_name is not None and self.experiment_id is not None:
            msg = (
                f"experiment_name={self.experiment_name!r} and experiment_id={self.experiment_id!r} "
                "cannot both be set: give one of them"
            )
            raise ValueError(msg)
        if self.run_name is not None and self.run_id is not None:
            msg = (
                f"run_name={self.run_name!r} and run_id={self.run_id!r} cannot both be set: give one of them"
            )
            raise ValueError(msg)


FIELDS: Final = attrs.fields(MlflowTrackingSettings)
