"""Links to a task's own run (``target=LinkTarget.OWN``), rendered by Flyte and opened in the MLflow UI.

The links are the ones a real local run records (see the ``recorded`` fixture), and the browser
tests open them in headless Chromium against the session's ``mlflow server``: each must land on
exactly the task's own run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import flyte
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page

from flyteplugins.mlflow import LinkTarget, Mlflow, MlflowRun, RunMode, mlflow_config, mlflow_run
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY, RESOLVED_EXPERIMENTS_KEY
from tests.conftest import Links, MlflowServer, Recorded
from tests.helpers.support import CREATE, LOG_METRIC, SEARCH, UPDATE, own_run_id, screenshot

env = flyte.TaskEnvironment(name="own-link-tests")

OWN = Mlflow(target=LinkTarget.OWN)
trials = MlflowRun(run_mode="nested")


@trials
@env.task(links=(trials.link(target="own"), Mlflow()))
async def trial(i: int) -> str:
    mlflow.log_metric("score", float(i))
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task(links=(OWN,))
async def baseline() -> str:
    return own_run_id()


@mlflow_run
@env.task(links=(OWN,))
async def prepare() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def study(n: int) -> dict[str, Any]:
    trial_ids = await asyncio.gather(*(trial(i) for i in range(n)))
    return {
        "parent": own_run_id(),
        "prepare": await prepare(),
        "baseline": await baseline(),
        "trials": trial_ids,
    }


@env.task
async def untracked_caller() -> str:
    return await baseline()


def _study(recorded: Recorded, uri: str, experiment_id: str, n: int = 3) -> tuple[dict[str, Any], Links]:
    ctx = mlflow_config(tracking_uri=uri, experiment_id=experiment_id, link_host=uri + "/")
    out, links = recorded.run(study, ctx, n=n)
    assert isinstance(out, dict)
    return out, links


def _filter_of(url: str) -> str:
    return unquote(url.split("searchFilter=", 1)[1].split("&", 1)[0])


def test_recorded_own_links_name_each_tasks_run(
    recorded: Recorded, mlflow_server: MlflowServer, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """New and nested children get the filtered run list of their own run; a sharing child the run's page."""
    uri, experiment_id = mlflow_server.uri, experiment[1]
    out, links = _study(recorded, uri, experiment_id)
    (baseline_link,) = links["baseline"]
    assert baseline_link[0] == "MLflow"
    base = f"{uri}/#/experiments/{experiment_id}/runs?searchFilter="
    tail = "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true&workflowType=machine_learning"
    assert baseline_link[1].startswith(base) and baseline_link[1].endswith(tail)
    tags = client.get_run(out["baseline"]).data.tags
    expected = (
        f"tags.`flyte.run_name` = '{tags['flyte.run_name']}' and "
        f"tags.`flyte.action_name` = '{tags['flyte.action_name']}'"
    )
    assert _filter_of(baseline_link[1]) == expected
    assert links["prepare"] == [("MLflow", f"{uri}/#/experiments/{experiment_id}/runs/{out['parent']}")]
    own = [url for name, url in links["trial"] if name == "MLflow"]
    parent = [url for name, url in links["trial"] if name == "MLflow (parent)"]
    assert len(own) == len(set(own)) == 3
    assert parent == [f"{uri}/#/experiments/{experiment_id}/runs/{out['parent']}"] * 3
    actions = {client.get_run(r).data.tags["flyte.action_name"] for r in out["trials"]}
    assert {_filter_of(url).rsplit("'", 2)[1] for url in own} == actions


def test_own_links_and_task_names_cost_no_request(
    recorded: Recorded, mlflow_server: MlflowServer, experiment: tuple[str, str]
) -> None:
    """Rendering own links and naming runs adds nothing: each owned run is still one create and one
    update (parent, three trials, baseline), plus the root's one sweep; the shared run costs nothing."""
    mark = mlflow_server.mark()
    _study(recorded, mlflow_server.uri, experiment[1])
    seen = mlflow_server.requests(mark)
    assert Counter(seen) == Counter({CREATE: 5, UPDATE: 5, SEARCH: 1, LOG_METRIC: 3})  # each trial logs one


def test_no_known_experiment_id_means_no_own_link(recorded: Recorded, mlflow_server: MlflowServer) -> None:
    """A new task under an untracked caller with no experiment configured has no id to link to: ""."""
    ctx = mlflow_config(tracking_uri=mlflow_server.uri, link_host=mlflow_server.uri)
    run_id, links = recorded.run(untracked_caller, ctx)
    assert links["baseline"] == [("MLflow", "")]
    mlflow_client = MlflowClient(mlflow_server.uri)
    assert mlflow_client.get_run(str(run_id)).info.experiment_id == "0"


# --- in the MLflow UI --------------------------------------------------------------------------


def _open(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(url)
    return page


_SHOWN = """() => {
    const counted = document.body.innerText.match(/(\\d+) matching runs?/);
    const links = document.querySelectorAll("a[href*='/runs/']");
    return counted !== null && links.length > 0 && parseInt(counted[1]) === links.length;
}"""


def _listed_run_ids(page: Page) -> list[str]:
    """The run ids of the rows the MLflow UI's run list shows, once it shows as many as it says it matched."""
    page.wait_for_function(_SHOWN, timeout=30_000)
    hrefs = page.locator("a[href*='/runs/']").evaluate_all(
        "(links) => links.map(a => a.getAttribute('href'))"
    )
    return sorted(str(h).rsplit("/runs/", 1)[1].split("?")[0] for h in hrefs)


def test_own_links_land_on_exactly_the_tasks_run(
    recorded: Recorded,
    mlflow_server: MlflowServer,
    experiment: tuple[str, str],
    browser: Browser,
    tmp_path: Path,
) -> None:
    """Opened in the MLflow UI, each new or nested task's link lists one run: that task's own run."""
    out, links = _study(recorded, mlflow_server.uri, experiment[1])
    expected = {
        url: None for url in [links["baseline"][0][1]] + [u for n, u in links["trial"] if n == "MLflow"]
    }
    found: list[str] = []
    for i, url in enumerate(expected):
        page = _open(browser, url)
        ids = _listed_run_ids(page)
        assert page.get_by_text("1 matching run").count() == 1, page.locator("body").inner_text()[:2000]
        assert len(ids) == 1, ids
        found.extend(ids)
        if i == 1:  # a nested trial: listed on its own, not folded under its parent
            screenshot(page, "own-link-nested-trial")
            assert page.get_by_role("link", name="trial").count() == 1
        page.close()
    assert sorted(found) == sorted([out["baseline"], *out["trials"]])


def test_shared_run_link_opens_the_runs_page(
    recorded: Recorded,
    mlflow_server: MlflowServer,
    experiment: tuple[str, str],
    browser: Browser,
) -> None:
    """An auto task's own link is the shared run's page, which shows the run named after its task."""
    out, links = _study(recorded, mlflow_server.uri, experiment[1], n=1)
    page = _open(browser, links["prepare"][0][1])
    page.get_by_text(out["parent"]).first.wait_for(timeout=30_000)
    assert page.get_by_text("study", exact=True).count() >= 1
    page.close()


def test_runs_are_named_after_their_tasks_in_the_ui(
    recorded: Recorded,
    mlflow_server: MlflowServer,
    experiment: tuple[str, str],
    client: MlflowClient,
    browser: Browser,
) -> None:
    """The experiment's run list shows the task names (study, trial, baseline), never random names."""
    uri, experiment_id = mlflow_server.uri, experiment[1]
    _study(recorded, uri, experiment_id)
    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["baseline", "study", "trial", "trial", "trial"]
    url = (
        f"{uri}/#/experiments/{experiment_id}/runs?orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
        "&workflowType=machine_learning"
    )
    page = _open(browser, url)
    assert len(_listed_run_ids(page)) == 5
    assert page.get_by_text("5 matching runs").count() == 1
    screenshot(page, "runs-named-after-tasks")
    page.close()


# --- get_link as a pure function ---------------------------------------------------------------

HOST = "http://mlflow.example:5000"
PARENT = "0123456789abcdef0123456789abcdef"


def _render(link: Mlflow, context: dict[str, str], action: str = "a1") -> str:
    return link.get_link("r1", "p", "development", context, "a0", action, "pod")


def _ctx(parent: bool = True, link_host: str | None = HOST, **settings: Any) -> dict[str, str]:
    context = dict(mlflow_config(link_host=link_host, **settings))
    if parent:
        context.update({PARENT_RUN_KEY: PARENT, PARENT_EXPERIMENT_KEY: "17"})
    return context


def _listing(experiment_id: str, action: str = "a1") -> str:
    f = "tags.%60flyte.run_name%60%20%3D%20%27r1%27%20and%20"
    f += f"tags.%60flyte.action_name%60%20%3D%20%27{action}%27"
    return (
        f"{HOST}/#/experiments/{experiment_id}/runs?searchFilter={f}"
        "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true&workflowType=machine_learning"
    )


@pytest.mark.parametrize(
    ("link", "context", "expected"),
    [
        (Mlflow(target="own", run_mode="new"), _ctx(), _listing("17")),
        (Mlflow(target="own", run_mode="nested"), _ctx(), _listing("17")),
        (Mlflow(target="own"), _ctx(), f"{HOST}/#/experiments/17/runs/{PARENT}"),
        (Mlflow(target="own"), _ctx(run_mode="new"), _listing("17")),
        (Mlflow(target="own"), _ctx(parent=False), ""),
        (Mlflow(target="own"), _ctx(parent=False, experiment_id="5"), _listing("5")),
        (Mlflow(target="own", run_mode="new"), _ctx(experiment_id="5"), _listing("5")),
        (Mlflow(target="own", run_mode="nested"), _ctx(experiment_id="5"), _listing("17")),
        (Mlflow(target="own", run_mode="new"), _ctx(experiment_name="churn"), ""),
        (
            Mlflow(target="own", run_mode="new"),
            {**_ctx(experiment_name="churn"), RESOLVED_EXPERIMENTS_KEY: '{"churn": "9"}'},
            _listing("9"),
        ),
        (Mlflow(target="own", run_mode="new", experiment_id="3"), _ctx(experiment_id="5"), _listing("3")),
        (Mlflow(target="own", run_mode="new"), _ctx(link_host=None), ""),
        (Mlflow(target="own", link="https://x/y"), _ctx(), "https://x/y"),
    ],
)
def test_own_link_cases(link: Mlflow, context: dict[str, str], expected: str) -> None:
    """The own link follows the run mode and the experiment the task's run will use; no id, no link."""
    assert _render(link, context) == expected


def test_own_link_without_link_host_is_empty() -> None:
    """Without a link_host nothing is generated, as for the default link."""
    context = {PARENT_RUN_KEY: PARENT, PARENT_EXPERIMENT_KEY: "17"}
    assert _render(Mlflow(target="own", run_mode="new"), context) == ""


def test_remote_action_placeholder_is_kept_for_flyte() -> None:
    """Remotely Flyte passes ``{{.actionName}}`` and fills it in later, so it is left unencoded."""
    url = _render(Mlflow(target="own", run_mode="new"), _ctx(), action="{{.actionName}}")
    assert "%27{{.actionName}}%27" in url
    assert url == _listing("17", "{{.actionName}}")


def test_own_link_template_for_other_platforms() -> None:
    """own_link_template replaces the list URL (Databricks); link_template still shapes run pages."""
    context = _ctx(
        own_link_template="{host}/ml/experiments/{experiment_id}/runs?filter={filter}",
        link_template="{host}/ml/experiments/{experiment_id}/runs/{run_id}",
    )
    new = _render(Mlflow(target="own", run_mode="new"), context)
    assert (
        new
        == f"{HOST}/ml/experiments/17/runs?filter=" + _listing("17").split("searchFilter=")[1].split("&")[0]
    )
    shared = _render(Mlflow(target="own"), context)
    assert shared == f"{HOST}/ml/experiments/17/runs/{PARENT}"


@pytest.mark.parametrize("template", ["{host}/{run_id}", "{host}/{filter.x}", "{host}/{action}"])
def test_own_link_template_is_checked_at_construction(template: str) -> None:
    """Only {host}, {experiment_id} and {filter} are allowed; the error names the setting and the choices."""
    with pytest.raises(ValueError, match="own_link_template") as caught:
        mlflow_config(own_link_template=template)
    assert "{experiment_id}, {filter}, {host}" in str(caught.value)


def test_target_is_validated_at_construction() -> None:
    """A misspelt target is a ValueError naming the parameter, the value and the choices."""
    with pytest.raises(ValueError, match=r"target must be one of 'caller', 'own', 'trace', got 'mine'"):
        Mlflow(target="mine")
    with pytest.raises(ValueError, match="target"):
        MlflowRun().link(target="self")
    with pytest.raises(TypeError, match="target"):
        Mlflow(target=1)  # type: ignore[arg-type]


def test_binding_keeps_the_default_links_as_they_were() -> None:
    """Own links are not renamed "(parent)" and keep the tracker's experiment; default links are unchanged."""
    tracker = MlflowRun(run_mode="nested", experiment_id="3")
    assert tracker.link() == Mlflow(name="MLflow (parent)", run_mode=RunMode.NESTED)
    assert tracker.link(target=LinkTarget.OWN) == Mlflow(
        target=LinkTarget.OWN, run_mode=RunMode.NESTED, experiment_id="3"
    )
    assert MlflowRun().link(target="own") == Mlflow(target="own")
    assert Mlflow(target=LinkTarget.OWN) == OWN  # binding made copies
    assert trial.links[0] == Mlflow(target="own", run_mode="nested")
