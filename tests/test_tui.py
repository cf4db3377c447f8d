"""Flyte's own terminal UI (``flyte start tui``) over a study recorded with local persistence.

With no endpoint configured, ``flyte start tui`` opens Flyte's explore app (``ExploreTUIApp``) on the
local run store. The test drives that app with Textual's own test pilot, in a headless terminal,
the way a user would: it opens the study's run, moves to a trial and reads what the detail panel
shows. Its SVG screenshot, turned into a PNG by Chromium, is the picture in ``docs/what-you-see.md``.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flyte
from flyte._persistence._run_store import RunStore
from flyte.cli._tui import config_is_remote
from flyte.cli._tui._explore import ExploreTUIApp, RunDetailScreen
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser
from textual.widgets import Static

from flyteplugins.mlflow import MlflowRun, RunMode, mlflow_config, mlflow_run
from tests.conftest import MlflowServer, Recorded
from tests.helpers.support import own_run_id, screenshot

env = flyte.TaskEnvironment(name="tui")

nested = MlflowRun(run_mode=RunMode.NESTED, log_inputs=True)


@nested
@env.task(links=(nested.link(),))
async def trial(lr: float, depth: int) -> str:
    return own_run_id()


@mlflow_run
@env.task
async def study(n: int) -> dict[str, Any]:
    ids = await asyncio.gather(*(trial(0.01 * (i + 1), 2 + i) for i in range(n)))
    return {"study": own_run_id(), "trials": list(ids)}


SIZE = (150, 36)


def _text(screen: Any, box: str) -> str:
    widget = screen.query_one(f"#{box}", Static)
    return str(widget.render())


async def _drive(trial_action: str) -> tuple[str, str, str]:
    """Open the run in the explore app, select the trial; return its links, its inputs and an SVG."""
    app = ExploreTUIApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("enter")  # view the run under the cursor: the only one in the store
        for _ in range(50):
            if isinstance(app.screen, RunDetailScreen):
                break
            await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        tree = screen.query_one("#action-tree")
        tree.focus()
        assert tree.focus_action(trial_action)  # type: ignore[attr-defined]
        await pilot.press("enter")  # select it: the detail panel shows the trial
        await pilot.pause(0.5)
        return _text(screen, "box-log-links"), _text(screen, "box-inputs"), app.export_screenshot()


def test_the_tui_shows_a_trials_mlflow_link_and_inputs(
    recorded: Recorded,
    mlflow_server: MlflowServer,
    client: MlflowClient,
    experiment: tuple[str, str],
    browser: Browser,
) -> None:
    """In ``flyte start tui``'s local explore app, a trial of a recorded study shows its "MLflow (parent)"
    link to the study's run and its inputs, which are also its MLflow run's params."""
    assert not config_is_remote(None), "with no endpoint, flyte start tui opens the local explore app"
    ctx = mlflow_config(
        tracking_uri=mlflow_server.uri, experiment_id=experiment[1], link_host=mlflow_server.uri
    )
    out, _ = recorded.run(study, ctx, n=3)
    (run_name,) = {r.run_name for r in RunStore.list_runs_sync()}
    actions = [
        r for r in RunStore.list_actions_for_run_sync(run_name) if (r.task_name or "").endswith(".trial")
    ]
    chosen = sorted(actions, key=lambda r: json.loads(r.inputs or "{}").get("lr", 0))[0]

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        links, inputs, svg = pool.submit(asyncio.run, _drive(chosen.action_name)).result(timeout=120)

    study_run = f"{mlflow_server.uri}/#/experiments/{experiment[1]}/runs/{out['study']}"
    assert f"MLflow (parent): {study_run}" in links
    shown = json.loads(inputs[inputs.index("{") :])
    assert shown == {"lr": 0.01, "depth": 2}
    (trial_run,) = (r for r in out["trials"] if client.get_run(r).data.params.get("lr") == "0.01")
    assert client.get_run(trial_run).data.params == {"lr": "0.01", "depth": "2"}

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_content(f"<body style='margin:0;background:#000'>{svg}</body>")
    assert page.locator("svg").count() >= 1
    screenshot(page.locator("svg").first, "flyte-tui-trial")
    page.close()
