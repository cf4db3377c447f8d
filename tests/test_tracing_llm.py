"""MLflow's OpenAI autologging inside tracked and traced tasks, with the real ``openai`` client.

The client talks to a small OpenAI-compatible chat-completions server on loopback (no network, no
model): it answers every question with ``echo: <question>``. Real local Flyte runs against the
session's ``mlflow server``; traces are read back from the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import flyte
import mlflow
import mlflow.openai
import pytest
from mlflow.entities import Span
from mlflow.tracing.constant import TraceMetadataKey
from mlflow.tracking import MlflowClient
from openai import AsyncOpenAI, OpenAI

from flyteplugins.mlflow import mlflow_config, mlflow_run
from tests.helpers.support import own_run_id
from tests.test_tracing import children, read_traces

env = flyte.TaskEnvironment(name="llm")

TRIALS = 4


OVERLAP = threading.Barrier(TRIALS, timeout=10)
"""Holds each trial's call until all of them are in flight."""


class _ChatCompletions(BaseHTTPRequestHandler):
    """``POST .../chat/completions``: a ``chat.completion`` whose answer echoes the last message.

    A trial's question (``trial <i>``) is answered once every trial has asked; 503 if they do not all ask.
    """

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        if question.startswith("trial "):
            try:
                OVERLAP.wait()
            except threading.BrokenBarrierError:
                self.send_error(503, "the trials' calls were not all in flight at once")
                return
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {question}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
        data = json.dumps(answer).encode()
        self.send_response(200 if self.path.endswith("/chat/completions") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    """The base URL of the chat-completions server, running in a thread for the module."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _openai_client(llm_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``AsyncOpenAI()`` talks to the loopback server; OpenAI autologging is off again after each test."""
    monkeypatch.setenv("OPENAI_BASE_URL", llm_url)
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-key")
    OVERLAP.reset()
    yield
    mlflow.openai.autolog(disable=True)


async def ask(question: str) -> str:
    """One chat completion, as a user's code makes it."""
    response = await AsyncOpenAI(max_retries=0).chat.completions.create(
        model="stub-model", messages=[{"role": "user", "content": question}]
    )
    return response.choices[0].message.content or ""


@flyte.trace
async def ask_step(question: str) -> str:
    return await ask(question)


@env.task
async def tool(i: int) -> str:
    return await ask(f"tool {i}")


@mlflow_run(run_mode="nested")
@env.task
async def critic(text: str) -> list[str]:
    return [own_run_id(), await ask(f"critique {text}")]


@mlflow_run(tracing=True)
@env.task
async def agent(n: int) -> list[str]:
    mlflow.openai.autolog()  # where a user turns it on: in the task's body
    answers = [await ask("plan"), await ask_step("step")]
    answers += await asyncio.gather(*(tool(i) for i in range(n)))
    critic_run, critique = await critic("plan")
    return [own_run_id(), critic_run, *answers, critique]


def question(span: Span) -> str:
    """The question an autologged chat span recorded as its input."""
    content: str = span.inputs["messages"][-1]["content"]
    return content


def answer(span: Span) -> str:
    """The answer an autologged chat span recorded as its output."""
    content: str = span.outputs["choices"][0]["message"]["content"]
    return content


def test_autologged_llm_calls_nest_under_their_task_and_step_spans(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Calls in the task body, in a ``flyte.trace`` step, in untracked child tasks and in a tracked one:
    each autologged chat span, with its messages and answer, nests under the span current where it
    was made, and the call in the tracked child does not re-point the trace's source run to its run."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    run = flyte.with_runcontext(mode="local", custom_context=config).run(agent, 2)
    agent_run, critic_run, *answers = run.outputs()[0]
    assert answers == ["echo: plan", "echo: step", "echo: tool 0", "echo: tool 1", "echo: critique plan"]
    (trace,) = read_traces(client, experiment_id)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "llm.agent"
    assert children(spans, root) == ["AsyncCompletions", "ask_step", "llm.critic", "llm.tool", "llm.tool"]
    chats = {question(s): s for s in spans if s.name == "AsyncCompletions"}
    assert sorted(chats) == ["critique plan", "plan", "step", "tool 0", "tool 1"]
    (critic_span,) = [s for s in spans if s.name == "llm.critic"]
    assert chats["critique plan"].parent_id == critic_span.span_id
    assert chats["plan"].parent_id == root.span_id
    (step,) = [s for s in spans if s.name == "ask_step"]
    assert chats["step"].parent_id == step.span_id
    for span in spans:
        if span.name == "llm.tool":
            assert children(spans, span) == ["AsyncCompletions"]
            assert chats[f"tool {span.inputs['i']}"].parent_id == span.span_id
    for asked, chat in chats.items():
        assert chat.inputs["model"] == "stub-model"
        assert answer(chat) == f"echo: {asked}"
        assert chat.span_type == "CHAT_MODEL"
    assert critic_span.attributes["flyte.mlflow_run_id"] == critic_run
    assert trace.info.trace_metadata[TraceMetadataKey.SOURCE_RUN] == agent_run


@mlflow_run(run_mode="new")
@env.task
async def helper(text: str) -> list[str]:
    return [own_run_id(), await ask(f"help {text}")]


@env.task
async def untracked_agent() -> list[str]:
    mlflow.openai.autolog()
    return await helper("me")


def test_an_untracked_roots_trace_is_not_linked_to_a_childs_run(
    client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Tracing from the context on an untracked root: the call in a tracked child nests under the
    child's span, and the run's trace keeps no source run (MLflow would make it the child's)."""
    name, experiment_id = experiment
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name, tracing=True)
    helper_run, said = (
        flyte.with_runcontext(mode="local", custom_context=config).run(untracked_agent).outputs()[0]
    )
    assert said == "echo: help me"
    (trace,) = read_traces(client, experiment_id)
    spans = trace.data.spans
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "llm.untracked_agent" and "flyte.mlflow_run_id" not in root.attributes
    (helper_span,) = [s for s in spans if s.name == "llm.helper"]
    assert helper_span.attributes["flyte.mlflow_run_id"] == helper_run
    assert children(spans, helper_span) == ["AsyncCompletions"]
    assert TraceMetadataKey.SOURCE_RUN not in trace.info.trace_metadata, trace.info.trace_metadata


def ask_sync(question: str) -> str:
    """One chat completion with the synchronous client."""
    response = OpenAI(max_retries=0).chat.completions.create(
        model="stub-model", messages=[{"role": "user", "content": question}]
    )
    return response.choices[0].message.content or ""


@mlflow_run(run_mode="nested")
@env.task
async def trial(i: int, how: str) -> str:
    if how == "body":
        mlflow.openai.autolog()
    assert await ask(f"trial {i}") == f"echo: trial {i}"
    return own_run_id()


@mlflow_run(run_mode="nested")
@env.task
def sync_trial(i: int) -> str:
    mlflow.openai.autolog()
    assert ask_sync(f"trial {i}") == f"echo: trial {i}"
    return own_run_id()


@mlflow_run(run_mode="nested", autolog=True, framework="openai")
@env.task
async def autolog_trial(i: int) -> str:
    assert await ask(f"trial {i}") == f"echo: trial {i}"
    return own_run_id()


@mlflow_run
@env.task
async def study(how: str) -> list[str]:
    if how == "plugin":
        return list(await asyncio.gather(*(autolog_trial(i) for i in range(TRIALS))))
    if how == "sync body":
        return list(await asyncio.gather(*(sync_trial.aio(i) for i in range(TRIALS))))
    return list(await asyncio.gather(*(trial(i, how) for i in range(TRIALS))))


@pytest.mark.parametrize("how", ["body", "sync body", "module", "plugin"])
def test_parallel_trials_autologged_llm_traces_link_to_their_own_runs(
    how: str, client: MlflowClient, experiment: tuple[str, str], tracking_uri: str
) -> None:
    """Tracing off, 4 gathered trials' calls, all in flight at once: each autologged trace's source
    run is its own trial's. Autologging is turned on in each trial's body (async, or sync on worker
    threads), once before the run (as at module level), or by the plugin for each trial."""
    name, experiment_id = experiment
    if how == "module":
        mlflow.openai.autolog()
    config = mlflow_config(tracking_uri=tracking_uri, experiment_name=name)
    runs = flyte.with_runcontext(mode="local", custom_context=config).run(study, how).outputs()[0]
    assert len(set(runs)) == TRIALS
    found = read_traces(client, experiment_id, TRIALS)
    by_question = {question(t.data.spans[0]): t for t in found}
    assert sorted(by_question) == [f"trial {i}" for i in range(TRIALS)]
    for i, run_id in enumerate(runs):
        trace = by_question[f"trial {i}"]
        assert trace.info.trace_metadata.get(TraceMetadataKey.SOURCE_RUN) == run_id, (i, trace.info)
        assert answer(trace.data.spans[0]) == f"echo: trial {i}"
