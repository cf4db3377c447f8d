"""Tasks whose inputs ``log_inputs=True`` records, for ``test_inputs.py``: run locally, or as a pod.

The pod runs one through Flyte's task runner (``tests.helpers.pods``), so its inputs arrive through
Flyte's own conversion from the inputs file, as on a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum

import flyte
import mlflow
import pydantic
from flyte.io import DataFrame, Dir, File

from flyteplugins.mlflow import mlflow_run
from tests.helpers.support import own_run_id

env = flyte.TaskEnvironment(name="inputs-child")


class Optimizer(enum.Enum):
    """An enum input: recorded as its value."""

    ADAM = "adam"
    SGD = "sgd"


@dataclasses.dataclass
class Schedule:
    """A dataclass nested in another."""

    warmup: int = 100
    decay: float = 0.5


@dataclasses.dataclass
class TrainConfig:
    """A dataclass input: flattened with dots."""

    epochs: int = 3
    schedule: Schedule = dataclasses.field(default_factory=Schedule)


class Model(pydantic.BaseModel):
    """A pydantic input: flattened with dots; its ``token`` field is never recorded."""

    depth: int = 4
    activation: str = "relu"
    token: str = "hf_never_recorded"


@mlflow_run(run_mode="new", log_inputs=True)
@env.task
async def every_type(
    lr: float,
    depth: int,
    use_bn: bool,
    name: str,
    optimizer: Optimizer,
    started: datetime.datetime,
    budget: datetime.timedelta,
    config: TrainConfig,
    model: Model,
    extra: dict[str, float],
    layers: list[int],
    api_key: str,
    data: File,
    images: Dir,
    table: DataFrame,
    note: str = "default kept",
) -> str:
    """Every kind of input at once; returns its run's id."""
    return own_run_id()


@mlflow_run(run_mode="nested", log_inputs=True)
@env.task
async def trial(lr: float, depth: int, data: File) -> str:
    """A study's trial: its hyper-parameters and its data."""
    return own_run_id()


@mlflow_run(log_inputs=True)
@env.task
async def study(lrs: list[float], data: File) -> list[str]:
    """A study whose trials run side by side, each with its own lr and depth."""
    import asyncio

    return list(await asyncio.gather(*(trial(lr, i, data) for i, lr in enumerate(lrs))))


@mlflow_run(log_inputs=True)
@env.task
async def logs_lr_again(lr: float, again: float) -> str:
    """Logs its ``lr`` input again by hand, with the value ``again``."""
    mlflow.log_param("lr", again)
    return own_run_id()
