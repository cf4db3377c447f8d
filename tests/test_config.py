"""Settings and the ``custom_context`` codec: conversion, validation, immutability and exact round trips."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from flyteplugins.mlflow import (
    Mlflow,
    MlflowConfig,
    MlflowRun,
    OnRetry,
    OnTrackingError,
    RankScope,
    RunMode,
    mlflow_config,
    mlflow_run,
)
from flyteplugins.mlflow._settings.config import decode
from flyteplugins.mlflow._settings.frozen import thaw

BUILDERS: list[Any] = [MlflowConfig, MlflowRun, mlflow_config, mlflow_run]

# --- enums -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (RunMode.AUTO, RunMode.AUTO),
        ("auto", RunMode.AUTO),
        (RunMode.NEW, RunMode.NEW),
        ("new", RunMode.NEW),
        (RunMode.NESTED, RunMode.NESTED),
        ("nested", RunMode.NESTED),
    ],
)
def test_run_mode_accepts_members_and_strings(given: RunMode | str, expected: RunMode) -> None:
    """A run mode given as a member or as its plain string becomes that member, in both classes."""
    assert MlflowConfig(run_mode=given).run_mode is expected
    assert MlflowRun(run_mode=given).run_mode is expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (OnTrackingError.RAISE, OnTrackingError.RAISE),
        ("raise", OnTrackingError.RAISE),
        (OnTrackingError.WARN, OnTrackingError.WARN),
        ("warn", OnTrackingError.WARN),
    ],
)
def test_error_policy_accepts_members_and_strings(
    given: OnTrackingError | str, expected: OnTrackingError
) -> None:
    """An error policy given as a member or as its plain string becomes that member, in both classes."""
    assert MlflowConfig(on_tracking_error=given).on_tracking_error is expected
    assert MlflowRun(on_tracking_error=given).on_tracking_error is expected


@pytest.mark.parametrize("bad", ["sideways", "AUTO", "Nested", ""])
def test_unknown_run_mode_lists_the_valid_ones(bad: str) -> None:
    """A string that is not a run mode is a ValueError naming it and listing auto, new and nested."""
    for build in BUILDERS:
        with pytest.raises(ValueError, match="run_mode") as info:
            build(run_mode=bad)
        message = str(info.value)
        assert repr(bad) in message
        assert "'auto'" in message
        assert "'new'" in message
        assert "'nested'" in message


@pytest.mark.parametrize("build", [MlflowConfig, MlflowRun, mlflow_config, mlflow_run])
def test_rank_scope_accepts_members_and_strings_and_refuses_others(build: Any) -> None:
    """``rank_scope`` given as a member or its string becomes that member in every builder; another
    string is a ``ValueError`` naming the setting, the value and the choices; it round-trips."""
    assert build(rank_scope="worker").rank_scope is RankScope.WORKER
    assert build(rank_scope=RankScope.GLOBAL).rank_scope is RankScope.GLOBAL
    assert build().rank_scope is RankScope.GLOBAL
    with pytest.raises(ValueError, match="rank_scope") as info:
        build(rank_scope="node")
    assert "'node'" in str(info.value) and "'global', 'worker'" in str(info.value)
    config = mlflow_config(rank_scope="worker")
    assert dict(config) == {"mlflow_rank_scope": "worker"} and decode(config) == config


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (OnRetry.NEW, OnRetry.NEW),
        ("new", OnRetry.NEW),
        (OnRetry.RESUME, OnRetry.RESUME),
        ("resume", OnRetry.RESUME),
    ],
)
def test_retry_policy_accepts_members_and_strings(given: OnRetry | str, expected: OnRetry) -> None:
    """``on_retry`` given as a member or its plain string becomes that member, in every builder."""
    assert MlflowConfig(on_retry=given).on_retry is expected
    assert MlflowRun(on_retry=given).on_retry is expected
    assert mlflow_config(on_retry=given).on_retry is expected  # type: ignore[arg-type]
    assert mlflow_run(on_retry=given).on_retry is expected  # type: ignore[arg-type]


def test_unknown_retry_policy_lists_the_valid_ones() -> None:
    """A string that is not a retry policy is a ValueError naming the field, the value and the choices."""
    for build in BUILDERS:
        with pytest.raises(ValueError, match="on_retry") as info:
            build(on_retry="restart")
        message = str(info.value)
        assert "'restart'" in message and "'new'" in message and "'resume'" in message
    with pytest.raises(TypeError, match="on_retry"):
        MlflowRun(on_retry=1)  # type: ignore[arg-type]


def test_unknown_error_policy_lists_the_valid_ones() -> None:
    """A string that is not an error policy is a ValueError listing raise and warn."""
    with pytest.raises(ValueError, match="on_tracking_error") as info:
        MlflowConfig(on_tracking_error="ignore")
    message = str(info.value)
    assert "'ignore'" in message
    assert "'raise'" in message
    assert "'warn'" in message


def test_run_mode_of_another_type_is_a_type_error() -> None:
    """A run mode that is neither a member nor a string is a TypeError naming the field."""
    with pytest.raises(TypeError, match="run_mode"):
        MlflowRun(run_mode=1)  # type: ignore[arg-type]


# --- MlflowConfig as a Mapping[str, str] -------------------------------------------------------


def test_config_is_a_mapping_of_only_what_it_sets() -> None:
    """A config's items are exactly the settings it sets, encoded as strings under ``mlflow_*`` keys."""
    cfg = mlflow_config(
        tracking_uri="http://tracking.example:5000", experiment_id="846992856162999", tags={"team": "ml"}
    )
    assert isinstance(cfg, Mapping)
    assert dict(cfg) == {
        "mlflow_tracking_uri": "http://tracking.example:5000",
        "mlflow_experiment_id": "846992856162999",
        "mlflow_tags": '{"team":"ml"}',
    }
    assert len(cfg) == 3
    assert cfg["mlflow_experiment_id"] == "846992856162999"
    assert all(isinstance(v, str) for v in cfg.values())
    with pytest.raises(KeyError):
        cfg["mlflow_run_name"]


def test_empty_config_is_an_empty_mapping_but_truthy() -> None:
    """A config that sets nothing has no items, yet is truthy (Flyte keeps a truthy custom_context)."""
    cfg = mlflow_config()
    assert dict(cfg) == {}
    assert len(cfg) == 0
    assert bool(cfg) is True


def test_config_mapping_is_read_only() -> None:
    """Every way of changing a config's items raises TypeError and leaves the items as they were."""
    cfg = mlflow_config(run_name="r")
    attempts: list[Any] = [
        lambda: cfg.__setitem__("mlflow_run_name", "s"),
        lambda: cfg.__delitem__("mlflow_run_name"),
        lambda: cfg.update({"mlflow_run_name": "s"}),
        lambda: cfg.pop("mlflow_run_name"),
        lambda: cfg.popitem(),
        lambda: cfg.clear(),
        lambda: cfg.setdefault("mlflow_run_id", "abc"),
        lambda: cfg.__ior__({"mlflow_run_name": "s"}),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match="immutable"):
            attempt()
    assert dict(cfg) == {"mlflow_run_name": "r"}
    assert cfg.run_name == "r"


def test_config_pickles_to_an_equal_config() -> None:
    """A config survives pickling with its settings and its items."""
    cfg = mlflow_config(run_mode="nested", tags={"a": "b"}, autolog_kwargs={"x": [1, {"y": None}]})
    copy = pickle.loads(pickle.dumps(cfg))
    assert type(copy) is MlflowConfig
    assert copy == cfg
    assert dict(copy) == dict(cfg)


def test_defaults_are_not_encoded() -> None:
    """Settings left at their defaults, or set to them explicitly, add no items."""
    cfg = MlflowConfig(run_mode="auto", autolog=False, tags={}, on_tracking_error="raise")
    assert dict(cfg) == {}


# --- the codec ---------------------------------------------------------------------------------

ROUND_TRIPS: list[dict[str, Any]] = [
    {"experiment_id": "846992856162999"},
    {"experiment_name": "0042"},
    {"run_name": "2024"},
    {"run_name": "null"},
    {"run_name": "true"},
    {"run_name": "  spaced  "},
    {"run_name": '{"looks": "like json"}'},
    {"run_id": "abc123"},
    {"tracking_uri": "http://127.0.0.1:5000"},
    {"run_mode": "new"},
    {"run_mode": "nested"},
    {"tags": {"team": "ml", "empty": "", "json": "[1, 2]", "unicode": "héllo ✓"}},
    {"autolog": True},
    {"autolog": True, "framework": "sklearn", "log_models": False, "log_datasets": True},
    {"log_models": True, "log_datasets": False},
    {"autolog_kwargs": {"exclusive": False, "n": 3, "ratio": 0.5, "none": None, "s": "2024"}},
    {"autolog_kwargs": {"nested": {"list": [1, "two", [3.5, None], {"deep": True}], "empty": {}}}},
    {"link_host": "https://mlflow.example.com/", "link_template": "{host}/x/{experiment_id}/{run_id}"},
    {"on_tracking_error": "warn"},
    {"on_retry": "resume"},
    {"async_logging": True},
    {"request_timeout": 2.5, "request_retries": 0},
    {"outage_timeout": 0.0},
    {"outage_timeout": 1e-3},
    {"outage_timeout": 900.0},
    {"description": "first try", "log_system_metrics": True},
    {"report": True, "report_metric": "val/rmse", "report_goal": "maximize"},
    {"report_metric": "2024"},
    {"report_goal": "minimize"},
    {"log_inputs": True},
    {"tracing": True},
]


@pytest.mark.parametrize("settings", ROUND_TRIPS)
def test_every_setting_round_trips_through_the_context(settings: dict[str, Any]) -> None:
    """Decoding a config's items gives back an equal config."""
    cfg = mlflow_config(**settings)
    assert dict(cfg), "every case sets something"
    decoded = decode(dict(cfg))
    assert decoded == cfg
    assert decoded is not None
    assert dict(decoded) == dict(cfg)


@pytest.mark.parametrize("text", ["846992856162999", "2024", "null", "true", "false", "1e3", "None", "[]"])
def test_strings_stay_strings(text: str) -> None:
    """A string setting that looks like a number, null, a bool or JSON comes back as the same string."""
    decoded = decode(dict(mlflow_config(run_name=text)))
    assert decoded is not None
    assert decoded.run_name == text
    assert type(decoded.run_name) is str
    decoded_id = decode(dict(mlflow_config(experiment_id=text)))
    assert decoded_id is not None
    assert decoded_id.experiment_id == text
    assert type(decoded_id.experiment_id) is str


def test_mappings_and_flags_come_back_as_themselves() -> None:
    """Tags, nested autolog arguments and flags come back with their exact values and types."""
    kwargs = {"nested": {"list": [1, "two", [3.5, None], {"deep": True}]}, "flag": False, "n": 7}
    decoded = decode(
        dict(
            mlflow_config(
                tags={"a": "1", "b": "true"},
                autolog=True,
                log_models=False,
                log_datasets=True,
                autolog_kwargs=kwargs,
            )
        )
    )
    assert decoded is not None
    assert dict(decoded.tags) == {"a": "1", "b": "true"}
    assert thaw(decoded.autolog_kwargs) == kwargs
    assert decoded.autolog is True
    assert decoded.log_models is False
    assert decoded.log_datasets is True
    inner = thaw(decoded.autolog_kwargs)["nested"]["list"]
    assert type(inner[0]) is int
    assert type(inner[2][0]) is float
    assert inner[2][1] is None


def test_context_without_settings_decodes_to_none() -> None:
    """A context with no ``mlflow_*`` settings (other keys ignored) decodes to None."""
    assert decode({}) is None
    assert decode({"team": "ml", "mlflowish": "x"}) is None


def test_foreign_keys_are_ignored_next_to_settings() -> None:
    """Keys that are not settings do not disturb decoding of the ones that are."""
    decoded = decode({"team": "ml", "mlflow_run_name": "r", "mlflow_parent_run_id": "abc"})
    assert decoded == MlflowConfig(run_name="r")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mlflow_autolog", "yes"),
        ("mlflow_autolog", "True"),
        ("mlflow_autolog", ""),
        ("mlflow_log_models", "1"),
        ("mlflow_tags", "[1]"),
        ("mlflow_tags", "{not json"),
        ("mlflow_tags", '"a string"'),
        ("mlflow_autolog_kwargs", "null"),
        ("mlflow_run_mode", "sideways"),
        ("mlflow_on_tracking_error", "ignore"),
        ("mlflow_on_retry", "restart"),
        ("mlflow_request_timeout", "soon"),
        ("mlflow_request_retries", "2.5"),
        ("mlflow_outage_timeout", "forever"),
        ("mlflow_outage_timeout", "-1"),
        ("mlflow_outage_timeout", "inf"),
        ("mlflow_report", "yes"),
        ("mlflow_report_goal", "lowest"),
    ],
)
def test_malformed_context_value_names_key_and_value(key: str, value: str) -> None:
    """A malformed ``mlflow_*`` value is a ValueError naming the key and the value, never a default."""
    with pytest.raises(ValueError) as info:
        decode({key: value})
    message = str(info.value)
    assert key in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "context",
    [
        {"mlflow_tags": '{"a": 1}'},
        {"mlflow_experiment_name": "x", "mlflow_experiment_id": "1"},
        {"mlflow_framework": "nosuchlib"},
    ],
)
def test_invalid_settings_in_context_name_keys_and_values(context: dict[str, str]) -> None:
    """Well-formed values that make an invalid config are a ValueError that shows the keys and values."""
    with pytest.raises(ValueError) as info:
        decode(context)
    message = str(info.value)
    for key, value in context.items():
        assert key in message
        assert repr(value) in message


def test_non_string_context_value_is_rejected() -> None:
    """A context value that is not a string is a ValueError naming the key."""
    bad: dict[str, Any] = {"mlflow_autolog": True}
    with pytest.raises(ValueError, match="mlflow_autolog"):
        decode(bad)


# --- validation at construction ---------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDERS)
def test_experiment_name_and_id_conflict(build: Any) -> None:
    """Setting both experiment_name and experiment_id is a ValueError naming both."""
    with pytest.raises(ValueError, match="experiment_name") as info:
        build(experiment_name="exp", experiment_id="1")
    assert "experiment_id" in str(info.value)


@pytest.mark.parametrize("build", BUILDERS)
def test_run_name_and_id_conflict(build: Any) -> None:
    """Setting both run_name and run_id is a ValueError naming both."""
    with pytest.raises(ValueError, match="run_name") as info:
        build(run_name="r", run_id="abc")
    assert "run_id" in str(info.value)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tags", [("a", "b")]),
        ("tags", {"a": 1}),
        ("autolog", "yes"),
        ("autolog", 1),
        ("log_models", "false"),
        ("tracking_uri", 5),
        ("experiment_id", 846992856162999),
        ("run_name", 2024),
        ("autolog_kwargs", ["x"]),
        ("link_host", b"http://x"),
        ("request_timeout", "2"),
        ("outage_timeout", "300"),
        ("outage_timeout", True),
        ("log_inputs", "true"),
        ("tracing", "yes"),
    ],
)
def test_wrong_type_names_the_field(build: Any, field: str, value: object) -> None:
    """A setting of the wrong type is a TypeError naming the field."""
    with pytest.raises(TypeError, match=field):
        build(**{field: value})


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("value", [-1.0, -0.5, float("inf"), float("nan")])
def test_an_outage_timeout_must_be_finite_and_not_negative(build: Any, value: float) -> None:
    """``outage_timeout`` is refused below 0 and when not finite, with its name and value; 0 is allowed."""
    with pytest.raises(ValueError, match="outage_timeout") as info:
        build(outage_timeout=value)
    assert repr(value) in str(info.value)
    assert build(outage_timeout=0) is not None


@pytest.mark.parametrize("value", ["0", 0.0, True])
def test_wrong_rank_type_names_the_field(value: object) -> None:
    """A rank that is not an int is a TypeError naming ``rank``."""
    builders: tuple[Any, ...] = (MlflowRun, mlflow_run)
    for build in builders:
        with pytest.raises(TypeError, match="rank"):
            build(rank=value)


def test_negative_rank_is_refused() -> None:
    """A negative rank is a ValueError naming ``rank``."""
    with pytest.raises(ValueError, match="rank"):
        MlflowRun(rank=-1)


def test_unknown_mlflow_run_keyword_lists_valid_extras() -> None:
    """An unknown keyword of mlflow_run or mlflow_config is a ValueError naming it and listing the extras."""
    for build in (mlflow_run, mlflow_config):
        options: dict[str, Any] = {"nested_run": True}
        with pytest.raises(ValueError) as info:
            build(**options)
        message = str(info.value)
        assert "'nested_run'" in message
        assert "description" in message
        assert "log_system_metrics" in message


def test_start_run_extras_are_kept() -> None:
    """The documented mlflow.start_run extras are accepted and kept as run_kwargs."""
    tracker = mlflow_run(description="baseline", log_system_metrics=False)
    assert isinstance(tracker, MlflowRun)
    assert dict(tracker.run_kwargs) == {"description": "baseline", "log_system_metrics": False}


@pytest.mark.parametrize("build", BUILDERS)
def test_unknown_framework_is_named(build: Any) -> None:
    """An autolog framework with no MLflow module is a ValueError naming the framework."""
    with pytest.raises(ValueError, match="nosuchlib"):
        build(autolog=True, framework="nosuchlib")


@pytest.mark.parametrize("build", BUILDERS)
def test_empty_strings_are_refused(build: Any) -> None:
    """An empty string is not a valid text setting (it means "unset" in the context)."""
    with pytest.raises(ValueError, match="run_name"):
        build(run_name="")


# --- immutability, hashing, equality, evolve ---------------------------------------------------


def _full_tracker() -> MlflowRun:
    return MlflowRun(
        run_mode="nested",
        tracking_uri="http://127.0.0.1:5000",
        experiment_name="exp",
        tags={"team": "ml"},
        autolog=True,
        framework="sklearn",
        autolog_kwargs={"nested": {"list": [1, 2]}},
        link_host="http://127.0.0.1:5000",
        rank=0,
    )


def test_trackers_configs_and_links_are_frozen() -> None:
    """Assigning to a field of a tracker, a config or a link raises FrozenInstanceError."""
    tracker = _full_tracker()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tracker.run_mode = RunMode.NEW  # type: ignore[misc]
    cfg = mlflow_config(run_name="r")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.run_name = "other"  # type: ignore[misc]
    link = Mlflow()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        link.name = "other"  # type: ignore[misc]
    assert tracker.run_mode is RunMode.NESTED
    assert cfg.run_name == "r"
    assert link.name == "MLflow"


def test_mappings_inside_are_read_only() -> None:
    """The tags and kwargs (``autolog_kwargs``, ``run_kwargs``) held by a tracker cannot be changed
    through the object either, nor through what the caller passed in, at any depth."""
    tags = {"team": "ml"}
    inner = [1]
    autolog_kwargs: dict[str, Any] = {"a": inner}
    run_kwargs: dict[str, Any] = {"description": "baseline"}
    tracker = MlflowRun(tags=tags, autolog_kwargs=autolog_kwargs, run_kwargs=run_kwargs)
    tags["team"] = "changed"
    inner.append(2)
    autolog_kwargs["b"] = 3
    run_kwargs["description"] = "changed"
    assert dict(tracker.tags) == {"team": "ml"}
    assert thaw(tracker.autolog_kwargs) == {"a": [1]}
    assert dict(tracker.run_kwargs) == {"description": "baseline"}
    held: tuple[Any, ...] = (tracker.tags, tracker.autolog_kwargs, tracker.run_kwargs)
    for mapping in held:
        with pytest.raises(TypeError):
            mapping["team"] = "x"
    with pytest.raises((TypeError, AttributeError)):
        tracker.autolog_kwargs["a"].append(2)


def test_hashable_and_equal_by_value() -> None:
    """Equal settings give equal, equally hashed objects, tags and nested kwargs included."""
    a, b = _full_tracker(), _full_tracker()
    assert a == b
    assert a is not b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != attrs.evolve(a, tags={"team": "other"})
    assert a != attrs.evolve(a, autolog_kwargs={"nested": {"list": [1, 3]}})
    cfg_a, cfg_b = a.config(), b.config()
    assert cfg_a == cfg_b
    assert hash(cfg_a) == hash(cfg_b)
    assert {cfg_a: 1}[cfg_b] == 1
    assert hash(Mlflow()) == hash(Mlflow())


def test_evolve_makes_validated_copies() -> None:
    """attrs.evolve returns a converted, validated copy and leaves the original alone."""
    tracker = MlflowRun(experiment_name="exp")
    nested = attrs.evolve(tracker, run_mode="nested")
    assert nested.run_mode is RunMode.NESTED
    assert tracker.run_mode is RunMode.AUTO
    assert nested.experiment_name == "exp"
    with pytest.raises(ValueError, match="experiment_id"):
        attrs.evolve(tracker, experiment_id="1")
    cfg = attrs.evolve(mlflow_config(run_name="r"), run_name="s")
    assert dict(cfg) == {"mlflow_run_name": "s"}


def test_mlflow_run_builds_an_equal_tracker() -> None:
    """mlflow_run(...) with settings is the tracker built from the same settings."""
    assert mlflow_run(run_mode="new") == MlflowRun(run_mode=RunMode.NEW)
    assert mlflow_run(tags={"a": "b"}, rank=1) == MlflowRun(tags={"a": "b"}, rank=1)
    assert mlflow_run() == MlflowRun()
    assert mlflow_run(run_mode="new") != MlflowRun(run_mode=RunMode.NESTED)


def test_mlflow_config_builds_an_equal_config() -> None:
    """mlflow_config(...) is the MlflowConfig built from the same settings."""
    assert mlflow_config(run_mode="nested", tags={"a": "b"}) == MlflowConfig(
        run_mode=RunMode.NESTED, tags={"a": "b"}
    )


# --- tracker methods ---------------------------------------------------------------------------


def test_tracker_config_carries_every_setting_but_rank() -> None:
    """tracker.config() is the MlflowConfig with the tracker's settings, rank left out."""
    tracker = _full_tracker()
    cfg = tracker.config()
    assert type(cfg) is MlflowConfig
    assert cfg == MlflowConfig(
        run_mode="nested",
        tracking_uri="http://127.0.0.1:5000",
        experiment_name="exp",
        tags={"team": "ml"},
        autolog=True,
        framework="sklearn",
        autolog_kwargs={"nested": {"list": [1, 2]}},
        link_host="http://127.0.0.1:5000",
    )
    assert "mlflow_rank" not in cfg
    assert decode(dict(cfg)) == cfg


def test_for_rank_returns_a_bound_copy() -> None:
    """tracker.for_rank(2) is an equal tracker with rank 2; the original is unchanged."""
    tracker = _full_tracker()
    ranked = tracker.for_rank(2)
    assert ranked.rank == 2
    assert tracker.rank == 0
    assert attrs.evolve(ranked, rank=0) == tracker
    with pytest.raises(TypeError, match="rank"):
        tracker.for_rank("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        tracker.for_rank(-2)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (RunMode.AUTO, Mlflow()),
        (RunMode.NEW, Mlflow(run_mode=RunMode.NEW)),
        (RunMode.NESTED, Mlflow(name="MLflow (parent)", run_mode=RunMode.NESTED)),
    ],
)
def test_tracker_link_knows_the_run_mode(mode: RunMode, expected: Mlflow) -> None:
    """tracker.link() is a link bound to the tracker's run mode, renamed for nested runs."""
    link = MlflowRun(run_mode=mode).link()
    assert link == expected
    assert isinstance(link, Mlflow)


def test_tracker_link_keeps_a_custom_name() -> None:
    """A name given to tracker.link() is kept, even for nested runs."""
    link = MlflowRun(run_mode="nested").link("Study")
    assert link.name == "Study"
    assert link.run_mode is RunMode.NESTED
