"""The "MLflow" tab in a Flyte task's report (``report=True``): written when the call's run has ended.

On success and failure alike the run is read back (:mod:`.read`), rendered (:mod:`.render`) and the
report saved (Flyte itself saves it only after a successful ``@env.task(report=True)``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._plan.plan import ReportSpec
from flyteplugins.mlflow._report.read import read_back, with_trace
from flyteplugins.mlflow._report.render import render, render_failure
from flyteplugins.mlflow._runs.open import Opened
from flyteplugins.mlflow._settings.enums import OnTrackingError
from flyteplugins.mlflow._transport.client import client_for
from flyteplugins.mlflow._transport.servers import describe

__all__ = ["TAB", "write", "write_async"]

logger = logging.getLogger("flyteplugins.mlflow")

TAB: Final = "MLflow"


def _collect(opened: Opened, spec: ReportSpec, trace: tuple[str, str] | None) -> tuple[str, Exception | None]:
    run_id = opened.run.info.run_id
    try:
        client = client_for(opened.plan.tracking_uri, opened.plan.policy)
        view = with_trace(read_back(client, run_id, spec), client.uri, trace)
        return render(view), None
    except Exception as e:
        return render_failure(run_id, str(e)), e


def _settle(opened: Opened, error: BaseException | None, failure: Exception | None) -> None:
    if failure is None:
        return
    raising = error is None and opened.plan.on_error is OnTrackingError.RAISE
    if raising and isinstance(failure, MlflowTrackingError):
        msg = f"the MLflow report could not read run {opened.run.info.run_id} back: {failure}"
        raise MlflowTrackingError(msg) from failure
    logger.warning(
        "The MLflow report of run %s shows no data: %s (tracking URI %s)",
        opened.run.info.run_id,
        failure,
        describe(opened.plan.tracking_uri),
    )


def write(opened: Opened, error: BaseException | None, trace: tuple[str, str] | None = None) -> None:
    """Write and save the tab of a sync task whose run has ended (or that shared a run), if asked for.

    ``trace`` is the id and experiment of the task's trace, when it is traced; the tab names it.

    Raises:
        MlflowTrackingError: the run could not be read back after a successful body, under ``raise``.
    """
    spec = opened.plan.report
    if spec is None:
        return
    import flyte.report

    body, failure = _collect(opened, spec, trace)
    try:
        flyte.report.get_tab(TAB).replace(body)
        flyte.report.flush()
    except Exception as e:
        logger.warning("The MLflow report tab could not be saved: %s", e)
    _settle(opened, error, failure)


async def write_async(
    opened: Opened, error: BaseException | None, trace: tuple[str, str] | None = None
) -> None:
    """:func:`write` for async tasks: the read-back runs on a worker thread, the save on the loop.

    Raises:
        MlflowTrackingError: the run could not be read back after a successful body, under ``raise``.
    """
    spec = opened.plan.report
    if spec is None:
        return
    import flyte.report

    body, failure = await asyncio.to_thread(_collect, opened, spec, trace)
    try:
        flyte.report.get_tab(TAB).replace(body)
        await flyte.report.flush.aio()
    except Exception as e:
        logger.warning("The MLflow report tab could not be saved: %s", e)
    _settle(opened, error, failure)
