"""The same blocking task as ``remote_child.blocks_in_gloo``, in a module that never imports the plugin.

It is the baseline: how a pod's process reacts to SIGTERM without the plugin.
``tests/helpers/pods.py`` runs it through ``pod_runner``, which does not import the plugin either.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import flyte

env = flyte.TaskEnvironment(name="plain-child")


@env.task
async def blocks_in_gloo(port: int, rank: int) -> str:
    import torch.distributed as dist

    state = {
        "run": "-",
        "default_sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "watcher": any(t.name == "flyteplugins-mlflow-sigterm" for t in threading.enumerate()),
    }
    Path("blocked.tmp").write_text(json.dumps(state))
    Path("blocked.tmp").rename("blocked")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    return "never"
