"""Property-based checks of the settings and their ``custom_context`` codec (hypothesis).

* every valid configuration survives the trip through ``custom_context`` (and JSON, as Flyte stores
  it) unchanged;
* any ``dict[str, str]`` context either decodes or fails with a ``ValueError`` naming the key;
* any invalid constructor argument fails at construction with ``ValueError`` or ``TypeError``, and
  any accepted one can be decoded again: nothing that passes construction can break a running task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flyteplugins.mlflow import (
    MlflowConfig,
    MlflowRun,
    OnRetry,
    OnTrackingError,
    RankScope,
    ReportGoal,
    RunMode,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._plan.snapshot import Inherited
from flyteplugins.mlflow._settings.config import decode
from flyteplugins.mlflow._settings.settings import MlflowTrackingSettings
from flyteplugins.mlflow._tags import CONTEXT_PREFIX, RESOLVED_EXPERIMENTS_KEY

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

FIELDS = [f.name for f in attrs.fields(MlflowTrackingSettings)]
KEYS = [CONTEXT_PREFIX + name for name in FIELDS]


# --- strategies --------------------------------------------------------------------------------


def _no_credentials(text: str) -> bool:
    try:
        MlflowConfig(tracking_uri=text)
    except ValueError:
        return False
    return True


texts = st.text(min_size=1)
uris = st.one_of(
    st.builds(
        "{}://{}{}{}".format,
        st.sampled_from(["http", "https", "file", "databricks", "sqlite"]),
        st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
        st.sampled_from(["", ":5000", ":443"]),
        st.from_regex(r"(/[a-zA-Z0-9_@.-]{0,10}){0,3}", fullmatch=True),
    ),
    texts.filter(_no_credentials),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
templates = st.sampled_from(
    [
        "{host}/#/experiments/{experiment_id}/runs/{run_id}",
        "{host}/ml/experiments/{experiment_id}/runs/{run_id}",
        "{host}/r/{run_id}?x={{y}}",
        "{host}",
    ]
)


@st.composite
def valid_settings(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for a valid ``MlflowConfig``, each setting present or left out."""
    out: dict[str, Any] = {}

    def maybe(name: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            out[name] = draw(strategy)

    maybe("run_mode", st.sampled_from([*RunMode, *(m.value for m in RunMode)]))
    maybe("tracking_uri", uris)
    which = draw(st.sampled_from(["experiment_name", "experiment_id", None]))
    if which:
        out[which] = draw(texts)
    which = draw(st.sampled_from(["run_name", "run_id", None]))
    if which:
        out[which] = draw(texts)
    maybe("tags", st.dictionaries(texts, st.text(), max_size=5))
    maybe("autolog", st.booleans())
    maybe("framework", st.sampled_from(["sklearn", "pytorch", "xgboost", "lightgbm", "tensorflow"]))
    maybe("log_models", st.none() | st.booleans())
    maybe("log_datasets", st.none() | st.booleans())
    maybe("autolog_kwargs", st.dictionaries(st.text(), json_values, max_size=4))
    maybe("link_host", uris)
    maybe("link_template", templates)
    maybe(
        "run_kwargs",
        st.fixed_dictionaries({}, optional={"description": st.text(), "log_system_metrics": st.booleans()}),
    )
    maybe("on_tracking_error", st.sampled_from([*OnTrackingError, "raise", "warn"]))
    maybe("on_retry", st.sampled_from([*OnRetry, "new", "resume"]))
    maybe("async_logging", st.booleans())
    maybe(
        "request_timeout",
        st.floats(min_value=0, exclude_min=True, allow_infinity=False) | st.integers(1, 3600),
    )
    maybe("request_retries", st.integers(0, 10))
    maybe("outage_timeout", st.floats(min_value=0, allow_infinity=False) | st.integers(0, 86400))
    maybe("report", st.booleans())
    maybe("report_metric", st.from_regex(r"[\w./ :-]{1,30}", fullmatch=True))
    maybe("report_goal", st.sampled_from([None, *ReportGoal, "minimize", "maximize"]))
    maybe("rank_scope", st.sampled_from([*RankScope, "global", "worker"]))
    maybe("log_inputs", st.booleans())
    maybe("tracing", st.booleans())
    return out


# --- 1. valid configurations round-trip --------------------------------------------------------


@SETTINGS
@given(valid_settings())
def test_valid_configuration_round_trips(kwargs: dict[str, Any]) -> None:
    """A valid config decodes back to an equal config, also after a JSON round trip of the context."""
    config = MlflowConfig(**kwargs)
    context = dict(config)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())
    stored = json.loads(json.dumps(context))
    decoded = decode(stored)
    if not context:
        assert decoded is None
        assert config == MlflowConfig()
        return
    assert decoded == config
    for name in FIELDS:
        assert getattr(decoded, name) == getattr(config, name)


@SETTINGS
@given(valid_settings())
def test_tracker_settings_round_trip(kwargs: dict[str, Any]) -> None:
    """A tracker's settings, passed on through ``.config()``, arrive unchanged."""
    tracker = MlflowRun(**kwargs)
    decoded = decode(dict(tracker.config()))
    assert (decoded or MlflowConfig()) == tracker.config()


# --- 2. arbitrary contexts ---------------------------------------------------------------------

interesting_values = st.one_of(
    st.text(),
    st.sampled_from(
        [
            "",
            "true",
            "false",
            "null",
            "auto",
            "nested",
            "warn",
            "raise",
            "minimize",
            "maximize",
            "0",
            "-1",
            "11",
            "1.5",
            "nan",
            "inf",
            "1e400",
            "{}",
            "[]",
            '{"a": "b"}',
            '{"a": 1}',
            '{"description": 3}',
            '{"bogus": true}',
            "sklearn",
            "no_such_framework",
            "{host.__class__}",
            "http://user:pw@host",
        ]
    ),
)
contexts = st.dictionaries(st.sampled_from(KEYS) | st.text(), interesting_values, max_size=8)


@SETTINGS
@given(contexts)
# Found by hypothesis: the error quotes an example URL, and masking credentials over the whole message
# took everything from its "https://" to this value's "@" for a user name, the key included.
@example(context={"mlflow_flyte_console_url": "@"})
@example(context={"mlflow_tracking_uri": "http://x", "mlflow_flyte_console_url": "u@"})
def test_any_context_decodes_or_names_the_key(context: dict[str, str]) -> None:
    """Any string context decodes to settings or None, or raises a ValueError that names a setting key."""
    try:
        decoded = decode(context)
    except ValueError as e:
        assert any(key in str(e) for key in context if key in KEYS), str(e)
        assert ":pw@" not in str(e)
        return
    if decoded is None:
        assert not set(context) & set(KEYS)
    else:
        assert (decode(dict(decoded)) or MlflowConfig()) == decoded


@SETTINGS
@given(st.one_of(st.text(), st.sampled_from(["{}", '{"a": "1"}', '{"a": 1}', "[]", "null", ""])))
def test_any_resolved_experiments_entry_decodes_or_names_the_key(raw: str) -> None:
    """The inherited experiment-id map in a context either parses or is a ValueError naming its key."""
    try:
        inherited = Inherited.from_context({RESOLVED_EXPERIMENTS_KEY: raw})
    except ValueError as e:
        assert RESOLVED_EXPERIMENTS_KEY in str(e)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in inherited.experiment_ids.items())


# --- 3. arbitrary constructor arguments --------------------------------------------------------

anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.binary(),
        st.sampled_from([object(), RunMode.NEW, OnTrackingError.WARN, math.inf, -0.0, 1j, ..., str, len]),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=3)
        | st.dictionaries(st.text() | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)

BUILDERS: dict[str, Callable[..., object]] = {
    "MlflowConfig": MlflowConfig,
    "MlflowRun": MlflowRun,
    "mlflow_config": mlflow_config,
    "mlflow_run": mlflow_run,
}


def _check_accepted(built: object) -> None:
    """Whatever construction accepts must encode and decode again, as a task would."""
    config = built.config() if isinstance(built, MlflowRun) else built
    assert isinstance(config, MlflowConfig)
    assert (decode(dict(config)) or MlflowConfig()) == config


@SETTINGS
@given(
    st.sampled_from(list(BUILDERS)),
    st.sampled_from([*FIELDS, "rank", "description", "log_system_metrics"]),
    anything,
)
def test_any_argument_fails_at_construction_or_works(builder: str, name: str, value: object) -> None:
    """Any value for any setting is accepted (and decodable) or refused at construction with a
    ValueError or TypeError that names the setting and the value it got."""
    if name == "rank" and builder in ("MlflowConfig", "mlflow_config"):
        name = "run_mode"
    if name in ("description", "log_system_metrics") and builder in ("MlflowConfig", "MlflowRun"):
        value, name = {name: value}, "run_kwargs"
    try:
        built = BUILDERS[builder](**{name: value})
    except (ValueError, TypeError) as e:
        text, keys = str(e), list(value) if name == "run_kwargs" and isinstance(value, dict) else []
        assert name in text or any(str(k) in text for k in keys), f"{e!r} does not name the setting"
        said = ["got ", repr(name), *map(repr, keys)]  # a value, or the unknown keyword itself
        assert any(s in text for s in said), f"{e!r} does not say what it got"
        return
    _check_accepted(built)


@SETTINGS
@given(
    st.sampled_from(["mlflow_config", "mlflow_run"]),
    st.text(min_size=1).filter(lambda n: n not in FIELDS and n != "rank"),
    anything,
)
def test_unknown_keyword_is_refused(builder: str, name: str, value: object) -> None:
    """An unknown keyword is refused at construction, unless it is a supported start_run argument."""
    try:
        built = BUILDERS[builder](**{name: value})
    except (ValueError, TypeError) as e:
        assert name in str(e) or repr(name) in str(e) or "run_kwargs" in str(e)
        return
    assert name in ("description", "log_system_metrics")
    _check_accepted(built)


@pytest.mark.parametrize("builder", list(BUILDERS))
def test_conflicting_pairs_are_refused(builder: str) -> None:
    """The two mutually exclusive pairs are refused at construction, naming both settings."""
    for pair in ({"experiment_name": "a", "experiment_id": "1"}, {"run_name": "a", "run_id": "r"}):
        with pytest.raises(ValueError) as caught:
            BUILDERS[builder](**pair)
        for name in pair:
            assert name in str(caught.value)


def test_decoded_settings_match_the_documented_keys() -> None:
    """Every setting lives under ``mlflow_<field>``, and nothing else is written."""
    config = mlflow_config(tracking_uri="http://h:1", tags={"a": "b"}, request_retries=0)
    assert dict(config) == {
        "mlflow_tracking_uri": "http://h:1",
        "mlflow_tags": '{"a":"b"}',
        "mlflow_request_retries": "0",
    }
    assert isinstance(config, Mapping)
