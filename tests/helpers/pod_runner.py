"""Flyte's task runner for one action, the way a pod's entry point calls it, for the tests' subprocesses.

On a cluster, Flyte's ``a0`` entry point loads the task with its resolver (``getattr(module, name)``),
reads the inputs file its parent wrote (the values and the parent's ``custom_context``) and runs it
through ``load_and_run_task``. :func:`run` does the same, minus the cluster: no controller (these tasks
start no tasks of their own) and local paths for inputs, outputs and checkpoints. The attempt number
comes from ``FLYTE_ATTEMPT_NUMBER``, which Flyte reads as the backend sets it; ``TEST_CHECKPOINT_PATH``
and ``TEST_PREV_CHECKPOINT_PATH``, when set, are the checkpoint paths the backend gives an attempt;
``TEST_FLYTE_ENDPOINT``, when set, gives the task a Flyte client for that endpoint, as a pod that can
start tasks has (nothing is contacted until a call is made).

This module does not import the plugin, so a task module that does not either runs without it.
"""

from __future__ import annotations

import asyncio
import os

import flyte

RESOLVER = "flyte._internal.resolvers.default.DefaultTaskResolver"


def run(module: str, argv: list[str]) -> int:
    """Run the task ``argv[0]`` of ``module``: ``TASK INPUTS OUTPUT_DIR RUN_NAME ACTION_NAME``."""
    from flyte._internal.runtime.entrypoints import load_and_run_task
    from flyte.models import ActionID, CheckpointPaths, RawDataPath

    task_name, inputs_path, output_dir, run_name, action_name = argv
    checkpoint = os.environ.get("TEST_CHECKPOINT_PATH")
    checkpoints = (
        CheckpointPaths(
            checkpoint_path=checkpoint, prev_checkpoint_path=os.environ.get("TEST_PREV_CHECKPOINT_PATH")
        )
        if checkpoint
        else None
    )
    flyte.init(project="tests", domain="development", endpoint=os.environ.get("TEST_FLYTE_ENDPOINT"))
    asyncio.run(
        load_and_run_task(
            action=ActionID(name=action_name, run_name=run_name, project="tests", domain="development"),
            raw_data_path=RawDataPath(path=output_dir),
            output_path=output_dir,
            run_base_dir=output_dir,
            version="remote-test",
            controller=None,
            resolver=RESOLVER,
            resolver_args=["mod", module, "instance", task_name],
            input_path=inputs_path,
            checkpoint_paths=checkpoints,
        )
    )
    return 0
