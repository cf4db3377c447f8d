"""MLflow's system-metrics monitors (``log_system_metrics=True``): one per node, all in rank 0's run.

On several nodes each node's local rank 0 monitors its node into rank 0's run, as
``system/node-<n>/...``. Before rank 0 sets a successful run's final status it waits, through the
elastic agent's TCP store, for every other node's monitor to stop, so no system metric follows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from flyteplugins.mlflow._distributed import ranks
from flyteplugins.mlflow._errors import MlflowTrackingError
from flyteplugins.mlflow._tags import ATTEMPT_LIST_TAG, HOST_TAG
from flyteplugins.mlflow._transport.client import Client, client_for

if TYPE_CHECKING:
    from flyteplugins.mlflow._plan.plan import Plan

__all__ = ["NODE_WAIT", "Monitor", "Node", "node_monitor", "start", "this_node"]

logger = logging.getLogger("flyteplugins.mlflow")

NODE_WAIT: Final = 60.0
"""How long rank 0 waits, after a body that succeeded, for the other nodes' monitors to stop."""


@attrs.frozen
class Node:
    """Where this process runs in a job on several nodes (PyTorch elastic's variables)."""

    index: int  # GROUP_RANK
    count: int  # GROUP_WORLD_SIZE
    local_rank: int  # LOCAL_RANK

    @property
    def id(self) -> str:
        """The node id in metric names: ``node-<GROUP_RANK>``."""
        return f"node-{self.index}"


def this_node() -> Node | None:
    """This process's node, when the job has more than one; ``None`` otherwise (or unreadable)."""
    try:
        count = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
        index, local_rank = int(os.environ["GROUP_RANK"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None
    return Node(index, count, local_rank) if count > 1 else None


def _done_key(run_id: str, attempt: str | None, index: int) -> str:
    return f"flyteplugins.mlflow/{run_id}/{attempt or '-'}/node-{index}/monitor-stopped"


def _store(wait: float) -> Any:
    """A client of the elastic agent's TCP store, or ``None`` where there is none to share."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not addr or not port:
        return None
    from torch._C._distributed_c10d import TCPStore  # what torch.distributed re-exports

    return TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=wait), wait_for_workers=False)


def _mlflow_monitor(run_id: str, node: Node | None, tracking_uri: str | None, resume: bool) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    node_id = node.id if node is not None else None
    return SystemMetricsMonitor(run_id, resume_logging=resume, node_id=node_id, tracking_uri=tracking_uri)


def _tag_host(client: Client, run_id: str, node: Node) -> None:
    try:
        client.set_tags(run_id, {HOST_TAG.format(node=node.index): socket.gethostname()})
    except MlflowTrackingError as e:
        logger.warning("MLflow run %s: the host of %s could not be tagged: %s", run_id, node.id, e)


@attrs.define
class Monitor:
    """Rank 0's monitor for the run it owns; :meth:`finish` stops it (and waits for the other nodes)."""

    monitor: Any
    run_id: str
    attempt: str | None
    node: Node | None

    def finish(self, succeeded: bool = True) -> None:
        """Stop this process's monitor; after a body that succeeded, wait for the other nodes' monitors."""
        with contextlib.suppress(Exception):
            self.monitor.finish()
        if self.node is None or not succeeded:
            return
        others = [n for n in range(self.node.count) if n != self.node.index]
        keys = [_done_key(self.run_id, self.attempt, n) for n in others]
        try:
            store = _store(NODE_WAIT)
            if store is not None:
                store.wait(keys, timedelta(seconds=NODE_WAIT))
        except Exception as e:  # a node that died, or a store gone with its agent
            logger.warning("MLflow run %s: not every node's metrics monitor stopped: %s", self.run_id, e)


def start(p: Plan, run_id: str, client: Client) -> Monitor:
    """Start the monitor of the process that owns ``run_id`` (rank 0), with a node id on several nodes."""
    node = this_node()
    if node is not None:
        _tag_host(client, run_id, node)
    monitor = _mlflow_monitor(run_id, node, None, resume=p.opening == "resume" or p.retry is not None)
    monitor.start()
    return Monitor(monitor, run_id, p.tags.get(ATTEMPT_LIST_TAG), node)


@contextlib.contextmanager
def node_monitor(peer: ranks.Peer) -> Iterator[None]:
    """On a rank other than 0: monitor this node for rank 0's run while the body runs, if this process
    is the node's local rank 0 in a job on several nodes and rank 0 monitors its run."""
    node = this_node()
    if not peer.system_metrics or peer.shared or node is None or node.local_rank != 0 or node.index == 0:
        yield
        return
    monitor: Any = None
    run_id = ""
    try:
        run_id = ranks.rank0_id(peer)
        _tag_host(client_for(peer.tracking_uri, peer.policy), run_id, node)
        monitor = _mlflow_monitor(run_id, node, peer.tracking_uri, resume=peer.attempt not in (None, "0"))
        monitor.start()
    except Exception as e:
        logger.warning("%s: system metrics are not monitored on this node: %s", node.id, e)
    try:
        yield
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        if run_id:
            try:
                store = _store(NODE_WAIT)
                if store is not None:
                    store.set(_done_key(run_id, peer.attempt, node.index), "1")
            except Exception as e:
                logger.warning("%s: rank 0 was not told that this node's monitor stopped: %s", node.id, e)
