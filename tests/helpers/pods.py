"""Pods, emulated: each attempt of a Flyte action as a process of its own, started like the backend does.

:class:`Action` holds one action of a task in ``remote_child`` (or ``plain_child``): its inputs file
and its run and action names, the same for every attempt. :meth:`Action.start` starts an attempt the
way the backend starts a pod: Flyte's task runner (``pod_runner``), ``FLYTE_ATTEMPT_NUMBER`` counting
from 0, the attempt's checkpoint path and the previous attempt's, and an environment with nothing
MLflow-specific in it (the context says where to track). The kill tests and the SIGTERM benchmark use
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flyte._internal.runtime.convert import convert_from_native_to_inputs
from flyte._internal.runtime.entrypoints import load_task

__all__ = ["REMOTE_CHILD", "RESOLVER", "Action", "make_inputs", "pod_env", "reaped", "wait_blocked"]

ROOT = Path(__file__).resolve().parents[2]  # the repository, so the task modules import as tests.helpers.*
RESOLVER = "flyte._internal.resolvers.default.DefaultTaskResolver"
REMOTE_CHILD = "tests.helpers.remote_child"  # the module of the tasks an Action runs unless told
ENTRY = "import sys; from tests.helpers import pod_runner; sys.exit(pod_runner.run({module!r}, sys.argv[1:]))"


def pod_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A pod's environment: nothing MLflow-specific (the context says where to track), plus ``extra``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TORCHELASTIC_"))}
    for name in ("RANK", "FLYTE_ATTEMPT_NUMBER"):
        out.pop(name, None)
    paths = [str(ROOT), out.get("PYTHONPATH", "")]
    out["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
    out.update(extra or {})
    return out


class Action:
    """One Flyte action of a task in ``remote_child``: its inputs file and its names, for every attempt."""

    def __init__(self, workdir: Path, task_name: str, inputs: bytes, module: str = REMOTE_CHILD) -> None:
        self.workdir = workdir
        self.task_name = task_name
        self.module = module
        self.inputs_file = workdir / "inputs.pb"
        self.inputs_file.write_bytes(inputs)
        self.run_name = f"kills-{uuid.uuid4().hex[:8]}"
        self.action = f"a{uuid.uuid4().hex[:8]}"
        self.outputs: Path | None = None  # the output directory of the attempt started last

    def failed(self) -> bool:
        """Whether the attempt started last ended with the task failing (Flyte wrote an error file)."""
        from flyte._internal.runtime.io import error_path

        return self.outputs is not None and Path(error_path(str(self.outputs))).exists()

    def start(self, attempt: int, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start attempt ``attempt`` of the action, with its own output directory and checkpoint path."""
        out_dir = self.workdir / f"outputs-{attempt}-{uuid.uuid4().hex[:4]}"
        out_dir.mkdir()
        self.outputs = out_dir
        checkpoints = {"TEST_CHECKPOINT_PATH": str(self.workdir / f"checkpoint-{attempt}-{out_dir.name}")}
        previous = sorted(self.workdir.glob("checkpoint-*"), key=lambda p: p.stat().st_mtime)
        if previous:
            checkpoints["TEST_PREV_CHECKPOINT_PATH"] = str(previous[-1])
        (self.workdir / "blocked").unlink(missing_ok=True)
        return subprocess.Popen(
            [
                sys.executable, "-c", ENTRY.format(module=self.module), self.task_name,
                str(self.inputs_file), str(out_dir), self.run_name, self.action,
            ],
            cwd=self.workdir,
            env=pod_env({"FLYTE_ATTEMPT_NUMBER": str(attempt), **checkpoints, **(extra_env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Use an attempt's process, and kill it on the way out if it is still alive (a failed check included)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def make_inputs(
    task_name: str, context: Mapping[str, str], module: str = REMOTE_CHILD, **values: Any
) -> bytes:
    """The inputs file the backend writes for a top-level action of ``task_name``."""
    task = load_task(RESOLVER, "mod", module, "instance", task_name)
    inputs = asyncio.run(
        convert_from_native_to_inputs(task.native_interface, custom_context=dict(context), **values)
    )
    data: bytes = inputs.proto_inputs.SerializeToString(deterministic=True)
    return data


def wait_blocked(proc: subprocess.Popen[bytes], workdir: Path) -> str:
    """Wait until the attempt says it is blocked mid-body; return what it wrote (its run id, say)."""
    deadline = time.monotonic() + 120
    marker = workdir / "blocked"
    while time.monotonic() < deadline:
        if marker.exists():
            return marker.read_text()
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            msg = f"the attempt exited with {proc.returncode} before blocking:\n{out[-3000:]}"
            raise AssertionError(msg)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the attempt never blocked")
