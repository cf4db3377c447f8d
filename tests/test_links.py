"""The ``Mlflow`` link: the reference's link table, end to end through the links a local run records.

Flyte renders a task's links when its caller submits it, from the caller's context, and with
``flyte.init(local_persistence=True)`` it stores the rendered ``(name, url)`` pairs of every action
in its local run store. The ``recorded`` fixture (in ``conftest``) points that store at a temporary
directory and reads the pairs back per task.
"""

from __future__ import annotations

from typing import Any

import flyte
import pytest
from mlflow.tracking import MlflowClient

from flyteplugins.mlflow import Mlflow, MlflowRun, RunMode, mlflow_config, mlflow_run
from tests.conftest import Recorded
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="links-tests")

HOST = "http://mlflow.example:5000"
DATABRICKS_TEMPLATE = "{host}/ml/experiments/{experiment_id}/runs/{run_id}"
EXPLICIT = "https://mlflow.example.com/#/experiments/1/runs/abc123"

shared_link = Mlflow()
nested_tracker = MlflowRun(run_mode="nested")
new_tracker = MlflowRun(run_mode="new")


@mlflow_run
@env.task(links=(Mlflow(),))
async def auto_child() -> str:
    return own_run_id()


@mlflow_run(run_mode="new")
@env.task(links=(Mlflow(),))
async def new_child() -> str:
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task(links=(Mlflow(),))
async def nested_child() -> str:
    return own_run_id()


@mlflow_run
@env.task(links=(Mlflow(link=EXPLICIT),))
async def explicit_child() -> str:
    return own_run_id()


@mlflow_run
@env.task(links=(shared_link,))
async def shared_auto_child() -> str:
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task(links=(shared_link,))
async def shared_nested_child() -> str:
    return own_run_id()


@env.task(links=(nested_tracker.link(),))
async def plain_nested_linked() -> str:
    return "untracked"


@env.task(links=(new_tracker.link(),))
async def plain_new_linked() -> str:
    return "untracked"


@nested_tracker
@env.task(links=(nested_tracker.link(),))
async def tracker_nested_child() -> str:
    return own_run_id()


@mlflow_run
@env.task
async def parent() -> dict[str, str]:
    return {
        "parent": own_run_id(),
        "auto": await auto_child(),
        "new": await new_child(),
        "nested": await nested_child(),
        "explicit": await explicit_child(),
    }


@mlflow_run
@env.task
async def shared_parent() -> dict[str, str]:
    return {
        "parent": own_run_id(),
        "auto": await shared_auto_child(),
        "nested": await shared_nested_child(),
    }


@mlflow_run
@env.task
async def tracker_link_parent() -> dict[str, str]:
    return {
        "parent": own_run_id(),
        "plain_nested": await plain_nested_linked(),
        "plain_new": await plain_new_linked(),
        "tracker_nested": await tracker_nested_child(),
    }


@mlflow_run
@env.task
async def scoped_parent() -> dict[str, str]:
    with mlflow_config(run_mode="new"):
        child = await auto_child()
    return {"parent": own_run_id(), "scoped": child}


@mlflow_run(link_host=HOST + "/tracker/")
@env.task
async def tracker_host_parent() -> dict[str, str]:
    return {"parent": own_run_id(), "auto": await auto_child()}


@env.task
async def untracked_parent() -> str:
    return await auto_child()


def _url(host: str, experiment_id: str, run_id: str) -> str:
    return f"{host}/#/experiments/{experiment_id}/runs/{run_id}"


def test_links_follow_the_run_mode_table(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """auto shows the parent's run, new shows nothing, nested the parent renamed, explicit as given."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host=HOST + "/")
    ids, links = recorded.run(parent, ctx)
    parent_url = _url(HOST, experiment_id, ids["parent"])
    assert links["auto_child"] == [("MLflow", parent_url)]
    assert links["new_child"] == [("MLflow", "")]
    assert links["nested_child"] == [("MLflow (parent)", parent_url)]
    assert links["explicit_child"] == [("MLflow", EXPLICIT)]
    assert ids["auto"] == ids["parent"]
    assert ids["nested"] != ids["parent"]
    assert ids["new"] != ids["parent"]


def test_custom_link_template(recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]) -> None:
    """A link_template in the context replaces the default URL layout for auto and nested children."""
    _, experiment_id = experiment
    ctx = mlflow_config(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        link_host="https://dbc-123.cloud.databricks.com/",
        link_template=DATABRICKS_TEMPLATE,
    )
    ids, links = recorded.run(parent, ctx)
    expected = f"https://dbc-123.cloud.databricks.com/ml/experiments/{experiment_id}/runs/{ids['parent']}"
    assert links["auto_child"] == [("MLflow", expected)]
    assert links["nested_child"] == [("MLflow (parent)", expected)]
    assert links["new_child"] == [("MLflow", "")]
    assert links["explicit_child"] == [("MLflow", EXPLICIT)]


def test_no_link_host_means_no_generated_links(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """Without link_host no URL is generated, while an explicit link is still shown."""
    _, experiment_id = experiment
    _, links = recorded.run(parent, mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id))
    assert links["auto_child"] == [("MLflow", "")]
    assert links["nested_child"] == [("MLflow (parent)", "")]
    assert links["explicit_child"] == [("MLflow", EXPLICIT)]


def test_untracked_caller_gives_no_link(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """A child called by an untracked task has no parent run to point at, so its link is empty."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host=HOST)
    _, links = recorded.run(untracked_parent, ctx)
    assert links["auto_child"] == [("MLflow", "")]


def test_one_link_instance_shared_by_auto_and_nested(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """One Mlflow() on an auto and a nested task shows "MLflow" and "MLflow (parent)", and is not changed."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host=HOST)
    ids, links = recorded.run(shared_parent, ctx)
    parent_url = _url(HOST, experiment_id, ids["parent"])
    assert links["shared_auto_child"] == [("MLflow", parent_url)]
    assert links["shared_nested_child"] == [("MLflow (parent)", parent_url)]
    assert shared_link == Mlflow()
    assert shared_link.name == "MLflow"
    assert shared_link.run_mode is None
    original_auto = env.tasks[shared_auto_child.name]
    original_nested = env.tasks[shared_nested_child.name]
    assert original_auto.links == (shared_link,)
    assert original_nested.links == (shared_link,)
    assert original_nested.links[0] is shared_link


def test_tracker_link_knows_its_run_mode(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """tracker.link() renders for the tracker's run mode even on a task the tracker does not decorate."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host=HOST)
    ids, links = recorded.run(tracker_link_parent, ctx)
    parent_url = _url(HOST, experiment_id, ids["parent"])
    assert links["plain_nested_linked"] == [("MLflow (parent)", parent_url)]
    assert links["plain_new_linked"] == [("MLflow", "")]
    assert links["tracker_nested_child"] == [("MLflow (parent)", parent_url)]
    assert nested_tracker.link() == Mlflow(name="MLflow (parent)", run_mode=RunMode.NESTED)


def test_new_scope_clears_the_link(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str]
) -> None:
    """Inside ``with mlflow_config(run_mode="new")`` an auto task gets its own run and shows no link."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host=HOST)
    ids, links = recorded.run(scoped_parent, ctx)
    assert links["auto_child"] == [("MLflow", "")]
    assert ids["scoped"] != ids["parent"]


def test_link_host_on_the_parent_tracker(
    recorded: Recorded, tracking_uri: str, experiment: tuple[str, str], client: MlflowClient
) -> None:
    """A link_host set on the parent's tracker (trailing slash ignored) reaches its children's links."""
    _, experiment_id = experiment
    ctx = mlflow_config(tracking_uri=tracking_uri, experiment_id=experiment_id, link_host="http://ignored")
    ids, links = recorded.run(tracker_host_parent, ctx)
    assert links["auto_child"] == [("MLflow", _url(HOST + "/tracker", experiment_id, ids["parent"]))]
    assert client.get_run(ids["parent"]).info.experiment_id == experiment_id


# --- Mlflow.get_link as a pure function of the context -----------------------------------------

PARENT_RUN = "0123456789abcdef0123456789abcdef"


def _context(**settings: Any) -> dict[str, str]:
    context = dict(mlflow_config(**settings))
    context.update({"mlflow_parent_run_id": PARENT_RUN, "mlflow_parent_experiment_id": "17"})
    return context


def _render(link: Mlflow, context: dict[str, str]) -> str:
    return link.get_link(
        run_name="r1",
        project="p",
        domain="development",
        context=context,
        parent_action_name="a0",
        action_name="a1",
        pod_name="localhost",
    )


@pytest.mark.parametrize("host", [HOST, HOST + "/", HOST + "//"])
def test_get_link_builds_the_default_url(host: str) -> None:
    """With a parent run and link_host, the default template is filled and trailing slashes dropped."""
    assert _render(Mlflow(), _context(link_host=host)) == _url(HOST, "17", PARENT_RUN)


@pytest.mark.parametrize(
    ("link", "settings", "expected"),
    [
        (Mlflow(), {"link_host": HOST}, _url(HOST, "17", PARENT_RUN)),
        (Mlflow(), {"link_host": HOST, "run_mode": "nested"}, _url(HOST, "17", PARENT_RUN)),
        (Mlflow(), {"link_host": HOST, "run_mode": "new"}, ""),
        (Mlflow(run_mode="new"), {"link_host": HOST}, ""),
        (Mlflow(run_mode="nested"), {"link_host": HOST, "run_mode": "new"}, _url(HOST, "17", PARENT_RUN)),
        (Mlflow(run_mode="auto"), {"link_host": HOST, "run_mode": "new"}, _url(HOST, "17", PARENT_RUN)),
        (Mlflow(link=EXPLICIT), {"link_host": HOST, "run_mode": "new"}, EXPLICIT),
        (Mlflow(), {}, ""),
        (
            Mlflow(),
            {"link_host": "https://h", "link_template": "{host}/r/{run_id}?e={experiment_id}"},
            f"https://h/r/{PARENT_RUN}?e=17",
        ),
    ],
)
def test_get_link_cases(link: Mlflow, settings: dict[str, Any], expected: str) -> None:
    """The link's own run mode wins over the context's; new gives nothing; explicit links are kept."""
    assert _render(link, _context(**settings)) == expected


def test_get_link_needs_a_parent_run() -> None:
    """Without a parent run (or its experiment) in the context, there is nothing to link to."""
    only_host = dict(mlflow_config(link_host=HOST))
    assert _render(Mlflow(), only_host) == ""
    no_experiment = {**only_host, "mlflow_parent_run_id": PARENT_RUN}
    assert _render(Mlflow(), no_experiment) == ""
    assert _render(Mlflow(), {}) == ""
    assert _render(Mlflow(link=EXPLICIT), {}) == EXPLICIT


def test_get_link_tolerates_a_malformed_context() -> None:
    """A malformed mlflow_* entry gives an empty link rather than failing the task's submission."""
    context = {**_context(link_host=HOST), "mlflow_autolog": "yes"}
    assert _render(Mlflow(), context) == ""
    assert _render(Mlflow(link=EXPLICIT), context) == EXPLICIT


def test_get_link_is_pure() -> None:
    """Rendering neither changes the context nor the link, and repeats the same answer."""
    link = Mlflow(run_mode="nested")
    context = _context(link_host=HOST)
    before_context, before_link = dict(context), Mlflow(run_mode="nested")
    first = _render(link, context)
    assert _render(link, context) == first == _url(HOST, "17", PARENT_RUN)
    assert context == before_context
    assert link == before_link
    assert _render(link, {}) == ""


@pytest.mark.parametrize(
    ("link", "mode", "expected"),
    [
        (Mlflow(), RunMode.AUTO, Mlflow()),
        (Mlflow(), RunMode.NEW, Mlflow(run_mode="new")),
        (Mlflow(), RunMode.NESTED, Mlflow(name="MLflow (parent)", run_mode="nested")),
        (Mlflow(name="Trial"), RunMode.NESTED, Mlflow(name="Trial", run_mode="nested")),
        (Mlflow(run_mode="new"), RunMode.NESTED, Mlflow(run_mode="new")),
        (
            Mlflow(link=EXPLICIT),
            RunMode.NESTED,
            Mlflow(name="MLflow (parent)", link=EXPLICIT, run_mode="nested"),
        ),
    ],
)
def test_bound_to_returns_copies(link: Mlflow, mode: RunMode, expected: Mlflow) -> None:
    """Binding a link to a run mode returns a (renamed for nested) copy and never changes the link."""
    before = Mlflow(name=link.name, link=link.link, run_mode=link.run_mode)
    assert link.bound_to(mode) == expected
    assert link == before


def test_link_is_a_flyte_link() -> None:
    """Mlflow subclasses flyte.Link and has the documented defaults."""
    link = Mlflow()
    assert flyte.Link in type(link).__mro__
    assert (link.name, link.link) == ("MLflow", "")


def test_link_fields_are_type_checked() -> None:
    """A non-string name or link is a TypeError naming the field."""
    with pytest.raises(TypeError, match="name"):
        Mlflow(name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="link"):
        Mlflow(link=None)  # type: ignore[arg-type]
