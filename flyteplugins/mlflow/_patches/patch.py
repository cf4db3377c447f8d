"""The one lifecycle of everything the plugin puts into MLflow: in on first use, out exactly after the last.

Each patch checks MLflow's internals before it installs and probes them after; if they no longer look
as expected it fails loudly with the MLflow version, rather than letting trials mix their state.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Patch", "Undo", "unsupported"]

A = TypeVar("A")


def unsupported(what: str, reason: str) -> RuntimeError:
    """The error of a patch that MLflow's internals no longer allow, naming the MLflow version."""
    import mlflow

    return RuntimeError(
        f"flyteplugins-mlflow cannot {what} with mlflow {mlflow.__version__}: {reason}. "
        "Install an mlflow version this plugin supports (see its pyproject.toml)."
    )


class Undo:
    """What an install changed, put back in reverse order."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def replace(self, target: Any, name: str, new: object) -> None:
        """Set ``target.name`` to ``new``, and remember the object it held (a class's own, not inherited)."""
        original = vars(target)[name] if isinstance(target, type) else getattr(target, name)
        setattr(target, name, new)
        self._steps.append(lambda: setattr(target, name, original))

    def then(self, step: Callable[[], None]) -> None:
        """Remember one more step to run on the way back."""
        self._steps.append(step)

    def run(self) -> None:
        """Put everything back, last change first."""
        while self._steps:
            self._steps.pop()()


class Patch(Generic[A]):
    """Something put into MLflow for tracked calls, counted: installed by the first user, undone by the last.

    Args:
        what: what the patch lets the plugin do, for the error ("route runs per task").
        install: makes the change for the first user's argument, recording how to undo it; it
            checks MLflow first and probes after, raising :func:`unsupported` errors.
        admit: checks a later user's argument against the first one's (raises to refuse it).
    """

    def __init__(
        self,
        what: str,
        install: Callable[[Undo, A], None],
        admit: Callable[[A, A], None] | None = None,
    ) -> None:
        self.what = what
        self._install = install
        self._admit = admit
        self._lock = threading.Lock()
        self._users = 0
        self._arg: A | None = None
        self._undo: Undo | None = None

    def error(self, reason: str) -> RuntimeError:
        """:func:`unsupported` for this patch."""
        return unsupported(self.what, reason)

    def acquire(self, arg: A) -> None:
        """Count one user in; the first one installs the patch with ``arg``.

        Raises:
            RuntimeError: MLflow no longer looks as the patch expects (nothing is left changed).
            Exception: whatever ``admit`` raises for a refused user.
        """
        with self._lock:
            if self._users:
                if self._admit is not None:
                    self._admit(self._arg, arg)  # type: ignore[arg-type]
            else:
                undo = Undo()
                try:
                    self._install(undo, arg)
                except BaseException:
                    undo.run()
                    raise
                self._undo, self._arg = undo, arg
            self._users += 1

    def release(self) -> None:
        """Count one user out; the last one puts back exactly what the install changed."""
        with self._lock:
            self._users -= 1
            if not self._users and self._undo is not None:
                undo, self._undo, self._arg = self._undo, None, None
                undo.run()

    @contextlib.contextmanager
    def held(self, arg: A) -> Iterator[None]:
        """The patch, installed for the block."""
        self.acquire(arg)
        try:
            yield
        finally:
            self.release()

    def if_installed(self, step: Callable[[], None]) -> None:
        """Run ``step`` while the patch is installed, never during its install or undo."""
        with self._lock:
            if self._undo is not None:
                step()

    @property
    def users(self) -> int:
        """How many users hold the patch now (for tests and diagnostics)."""
        return self._users

    def installed(self) -> bool:
        """Whether the patch is in place."""
        return self._undo is not None

    @property
    def arg(self) -> A | None:
        """The first user's argument, while installed."""
        return self._arg
