"""Frozen JSON-like values: the immutable, hashable form that mapping settings are kept in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["FrozenDict", "freeze", "thaw"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenDict(Mapping[_K, _V]):
    """An immutable, hashable mapping: the frozen form of ``tags``, ``autolog_kwargs`` and ``run_kwargs``."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[_K, _V] | None = None) -> None:
        self._data: dict[_K, _V] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)


def freeze(value: Any) -> Any:
    """Return a hashable copy of a JSON-like value: dicts become ``FrozenDict``, lists become tuples."""
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Undo :func:`freeze`: the plain ``dict``/``list`` form that MLflow and JSON expect."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
