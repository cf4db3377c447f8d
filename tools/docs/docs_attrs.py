"""Griffe extension for the API reference: give attrs classes the ``__init__`` that attrs writes.

mkdocstrings reads the package's source, where an ``@attrs.frozen`` class has no ``__init__``: attrs
writes it when the class is created. Without it the reference would show ``MlflowConfig()`` with no
parameters, and every ``Args:`` entry would be reported as a parameter that does not exist. This
extension imports each attrs class of the package and adds its real ``__init__`` signature (names,
annotations, defaults, keyword-only markers) to what griffe found in the source.
"""

from __future__ import annotations

import ast
import enum
import inspect
from typing import Any

import attrs
import griffe


def _default(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _annotation(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return value if isinstance(value, str) else inspect.formatannotation(value)


class AttrsInit(griffe.Extension):
    """Adds the generated ``__init__`` to every attrs class under ``flyteplugins.mlflow``."""

    def on_class_members(
        self, *, node: ast.AST | griffe.ObjectNode, cls: griffe.Class, agent: Any, **kwargs: Any
    ) -> None:
        """Attach ``__init__`` with the runtime signature when ``cls`` is an attrs class."""
        if not cls.path.startswith("flyteplugins.mlflow.") or "__init__" in cls.members:
            return
        runtime = griffe.dynamic_import(cls.path)
        if not (isinstance(runtime, type) and attrs.has(runtime)):
            return
        signature = inspect.signature(runtime.__init__)
        parameters = griffe.Parameters(
            *(
                griffe.Parameter(
                    p.name,
                    annotation=_annotation(p.annotation),
                    kind=griffe.ParameterKind(p.kind.description),  # the same names
                    default=_default(p.default),
                )
                for p in signature.parameters.values()
            )
        )
        init = griffe.Function("__init__", parameters=parameters, returns="None", lineno=cls.lineno)
        cls.set_member("__init__", init)
