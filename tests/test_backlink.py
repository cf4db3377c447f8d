"""The way back to Flyte: a run's ``flyte.url`` tag and the Markdown link in its description.

The remote cases run a child task in a process of its own, as a pod runs it (see ``test_remote``),
since only remote actions have a project and a domain, and so an address in the console.
"""

from __future__ import annotations

from pathlib import Path

import flyte
import pytest
from flyte.remote._client.controlplane import Console
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser

from flyteplugins.mlflow import MlflowRun, mlflow_config, mlflow_run
from flyteplugins.mlflow._plan.backlink import action_url, tags_for
from flyteplugins.mlflow._plan.plan import plan
from flyteplugins.mlflow._plan.snapshot import Inherited, TaskSnapshot
from flyteplugins.mlflow._tags import FLYTE_URL_TAG, NOTE_TAG
from tests.helpers.support import CREATE, LOG_METRIC, UPDATE, own_run_id, screenshot
from tests.test_remote import RequestLog, _run_parent, server  # noqa: F401  (server: the fixture)

env = flyte.TaskEnvironment(name="backlink-tests")

CONSOLE = "https://flyte.example.com"
ACTION = {
    "flyte.project": "ml",
    "flyte.domain": "development",
    "flyte.run_name": "r7",
    "flyte.action_name": "a3",
}


def test_action_url_has_the_layout_of_flytes_console() -> None:
    """The address built from the setting is the one Flyte's own client builds for the same console."""
    flytes = Console(CONSOLE).action_url(project="ml", domain="development", run_name="r7", action_name="a3")
    assert action_url(CONSOLE + "/", ACTION) == flytes
    assert flytes == f"{CONSOLE}/v2/domain/development/project/ml/runs/r7?i=a3"


def test_no_address_without_project_and_domain() -> None:
    """A local run has no project or domain, so it has no address in the console."""
    local = {"flyte.run_name": "r7", "flyte.action_name": "a3"}
    assert action_url(CONSOLE, local) is None


def test_description_keeps_what_the_user_wrote() -> None:
    """The link goes after the user's description; the tag holds the same address."""
    url = action_url(CONSOLE, ACTION)
    assert url is not None
    assert tags_for(url, ACTION, None) == {FLYTE_URL_TAG: url, NOTE_TAG: f"Flyte: [r7 / a3]({url})"}
    assert tags_for(url, ACTION, "Baseline *v2*")[NOTE_TAG] == f"Baseline *v2*\n\nFlyte: [r7 / a3]({url})"
    odd = {**ACTION, "flyte.run_name": "r[1]"}
    assert tags_for(url, odd, None)[NOTE_TAG].startswith("Flyte: [r\\[1\\] / a3](")


@pytest.mark.parametrize(
    "value",
    ["flyte.example.com", "ftp://flyte.example.com", "https://", "https://h/?x=1", "https://h/#/x"],
)
def test_console_url_is_validated_at_construction(value: str) -> None:
    """Anything but an http(s) address with a host is a ValueError naming the setting and the value."""
    with pytest.raises(ValueError, match="flyte_console_url") as caught:
        mlflow_config(flyte_console_url=value)
    assert repr(value) in str(caught.value)
    with pytest.raises(ValueError, match="flyte_console_url"):
        MlflowRun(flyte_console_url=value)


def test_console_url_refuses_credentials() -> None:
    """Like the tracking URI, the setting is stored in run metadata, so it may not carry a password."""
    with pytest.raises(ValueError, match="must not contain credentials"):
        mlflow_config(flyte_console_url="https://user:secret@flyte.example.com")


def _snapshot(**changes: object) -> TaskSnapshot:
    fields: dict[str, object] = {"in_task": True, "flyte_tags": ACTION, "action_id": "ml/development/r7/a3"}
    fields.update(changes)
    return TaskSnapshot(**fields)  # type: ignore[arg-type]


def test_plan_puts_the_way_back_on_the_create_request() -> None:
    """A created run's tags carry the note and the address: nothing else is sent for them."""
    snap = _snapshot(config=mlflow_config(flyte_console_url=CONSOLE, description="mine"))
    p = plan(MlflowRun(), None, snap, "http://mlflow")
    assert p is not None and p.opening == "create"
    url = f"{CONSOLE}/v2/domain/development/project/ml/runs/r7?i=a3"
    assert p.tags[FLYTE_URL_TAG] == url
    assert p.tags[NOTE_TAG] == f"mine\n\nFlyte: [r7 / a3]({url})"


def test_setting_wins_over_flytes_client() -> None:
    """The setting wins (the client's endpoint may be an in-cluster address); else the client's is used."""
    from_client = "https://internal:8080/v2/domain/development/project/ml/runs/r7?i=a3"
    with_setting = plan(MlflowRun(flyte_console_url=CONSOLE), None, _snapshot(flyte_url=from_client), "u")
    without = plan(MlflowRun(), None, _snapshot(flyte_url=from_client), "u")
    assert with_setting is not None and without is not None
    assert with_setting.tags[FLYTE_URL_TAG].startswith(CONSOLE + "/v2/")
    assert without.tags[FLYTE_URL_TAG] == from_client


def test_resumed_run_keeps_its_description() -> None:
    """A run resumed by run_id gets the address tag, but its description is left as it is."""
    p = plan(MlflowRun(run_id="abc", flyte_console_url=CONSOLE), None, _snapshot(), "u")
    assert p is not None and p.opening == "resume"
    assert FLYTE_URL_TAG in p.tags
    assert NOTE_TAG not in p.tags


def test_nothing_without_an_address() -> None:
    """With no setting and no client, or for a local run, no tag and no note are added."""
    none = plan(MlflowRun(), None, _snapshot(), "u")
    local = plan(
        MlflowRun(flyte_console_url=CONSOLE), None, _snapshot(flyte_tags={"flyte.run_name": "r"}), "u"
    )
    shared = plan(MlflowRun(flyte_console_url=CONSOLE), None, _snapshot(inherited=Inherited("p1", "1")), "u")
    for p in (none, local):
        assert p is not None
        assert FLYTE_URL_TAG not in p.tags and NOTE_TAG not in p.tags
    assert shared is not None and shared.opening == "share"


@mlflow_run
@env.task
async def local_task() -> str:
    return own_run_id()


def test_local_run_gets_no_way_back(
    tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A local run is not in the console: even with the setting, its run has no flyte.url and no note."""
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment[1], flyte_console_url=CONSOLE)
    run_id = flyte.with_runcontext(mode="local", custom_context=ctx).run(local_task).outputs()[0]
    tags = client.get_run(str(run_id)).data.tags
    assert FLYTE_URL_TAG not in tags and NOTE_TAG not in tags
    assert tags["flyte.action_name"]


# --- remote tasks, end to end ------------------------------------------------------------------


def test_remote_child_links_back_to_its_action(
    server: RequestLog,  # noqa: F811
    tmp_path: Path,
    client: MlflowClient,
    experiment: tuple[str, str],
    browser: Browser,
) -> None:
    """A remote nested child's run links to its action, in the description the MLflow UI renders, at
    no request cost: the child still makes exactly one create and one update."""
    result = _run_parent(
        "nested_child",
        tmp_path,
        server.uri,
        experiment[1],
        0.5,
        flyte_console_url=CONSOLE,
        description="Fold 1",
    )
    run = client.get_run(result["child_output"])
    run_name, action = result["flyte_run_name"], result["flyte_action"]
    url = f"{CONSOLE}/v2/domain/development/project/tests/runs/{run_name}?i={action}"
    assert run.data.tags[FLYTE_URL_TAG] == url
    label = f"{run_name} / {action}"
    assert run.data.tags[NOTE_TAG] == f"Fold 1\n\nFlyte: [{label}]({url})"
    assert [r for r in result["requests"] if r != LOG_METRIC] == [CREATE, UPDATE]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.uri}/#/runs/{run.info.run_id}")  # redirects to the run's page
    link = page.locator(f"a[href='{url}']")
    link.first.wait_for(timeout=30_000)
    assert link.count() == 1
    assert link.first.inner_text() == label
    assert page.get_by_text("Fold 1").count() >= 1
    link.first.scroll_into_view_if_needed()
    screenshot(page, "description-links-to-flyte")
    page.close()


def test_remote_child_uses_flytes_client_for_the_address(
    server: RequestLog,  # noqa: F811
    tmp_path: Path,
    client: MlflowClient,
    experiment: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod with a Flyte client and no setting, the address is the client's console address."""
    monkeypatch.setenv("TEST_FLYTE_ENDPOINT", "dns:///flyte.internal.example.com")
    result = _run_parent("new_child", tmp_path, server.uri, experiment[1], 0.25)
    run = client.get_run(result["child_output"])
    expected = (
        "https://flyte.internal.example.com/v2/domain/development/project/tests/runs/"
        f"{result['flyte_run_name']}?i={result['flyte_action']}"
    )
    assert run.data.tags[FLYTE_URL_TAG] == expected
    assert run.data.tags[NOTE_TAG].endswith(f"]({expected})")
