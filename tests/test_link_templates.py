"""Link templates: only ``{host}``, ``{experiment_id}`` and ``{run_id}``, checked at construction.

A template is a ``str.format`` string, and ``str.format`` can reach attributes and items of its
arguments (``{host.__class__}``), so anything beyond the three plain names is refused when the
settings are built, long before a link is rendered.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flyteplugins.mlflow import Mlflow, MlflowConfig, MlflowRun, mlflow_config, mlflow_run
from flyteplugins.mlflow._tags import PARENT_EXPERIMENT_KEY, PARENT_RUN_KEY

BUILDERS: dict[str, Callable[[str], object]] = {
    "MlflowConfig": lambda t: MlflowConfig(link_template=t),
    "mlflow_config": lambda t: mlflow_config(link_template=t),
    "MlflowRun": lambda t: MlflowRun(link_template=t),
    "mlflow_run": lambda t: mlflow_run(link_template=t),
}

REFUSED = {
    "attribute": "{host}/{host.__class__}",
    "deep attribute": "{host.__init__.__globals__}",
    "index": "{host}/runs/{run_id[0]}",
    "empty positional": "{host}/{}",
    "numbered positional": "{0}/runs/{run_id}",
    "unknown name": "{host}/users/{user}",
    "padded name": "{ host }/runs/{run_id}",
    "conversion": "{host!r}/runs/{run_id}",
    "format spec": "{host}/runs/{run_id:>40}",
    "conversion and spec": "{host}/runs/{run_id!s:10}",
    "unclosed field": "{host}/runs/{run_id",
    "stray closing brace": "{host}/runs/}",
}


def _render(template: str) -> str:
    """Render the link a child sees when its caller's run is run-1 in experiment 7."""
    context = {
        **mlflow_config(link_host="https://mlflow.example.com/", link_template=template),
        PARENT_RUN_KEY: "run-1",
        PARENT_EXPERIMENT_KEY: "7",
    }
    return Mlflow().get_link("run", "project", "domain", context, "parent", "action", "pod")


@pytest.mark.parametrize("template", list(REFUSED.values()), ids=list(REFUSED))
@pytest.mark.parametrize("build", list(BUILDERS.values()), ids=list(BUILDERS))
def test_template_beyond_the_three_names_is_refused(build: Callable[[str], object], template: str) -> None:
    """Attribute or index access, positional fields, other names, conversions and specs are ValueErrors."""
    with pytest.raises(ValueError, match="link_template") as caught:
        build(template)
    assert "{experiment_id}, {host}, {run_id}" in str(caught.value)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{host}/#/experiments/{experiment_id}/runs/{run_id}",
            "https://mlflow.example.com/#/experiments/7/runs/run-1",
        ),
        (
            "{host}/ml/experiments/{experiment_id}/runs/{run_id}",
            "https://mlflow.example.com/ml/experiments/7/runs/run-1",
        ),
        (
            "{host}/r/{run_id}?e={experiment_id}&x={{literal}}",
            "https://mlflow.example.com/r/run-1?e=7&x={literal}",
        ),
        ("{host}", "https://mlflow.example.com"),
    ],
)
def test_valid_template_renders(template: str, expected: str) -> None:
    """Templates made of the three names (and escaped braces) are accepted and render as written."""
    for build in BUILDERS.values():
        build(template)
    assert _render(template) == expected


def test_refused_template_in_a_hand_made_context_renders_no_link() -> None:
    """A bad template that reaches a link through a hand-made context yields no link, not an error."""
    context = {
        "mlflow_link_host": "https://mlflow.example.com",
        "mlflow_link_template": "{host.__class__}",
        PARENT_RUN_KEY: "run-1",
        PARENT_EXPERIMENT_KEY: "7",
    }
    assert Mlflow().get_link("run", "project", "domain", context, "parent", "action", "pod") == ""


def test_error_names_the_offending_field() -> None:
    """The message quotes the template and the field it refused."""
    with pytest.raises(ValueError) as caught:
        mlflow_config(link_template="{host}/{run_id[0]}")
    assert "'{host}/{run_id[0]}'" in str(caught.value)
    assert "uses {run_id[0]}" in str(caught.value)
