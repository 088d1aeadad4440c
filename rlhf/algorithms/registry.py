"""Name → function registries with errors that list the valid names (estimators, losses)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; a KeyError for mapping users and a ValueError for config users."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0])


class Registry(Mapping[str, Callable]):
    """A read-mostly mapping of names to functions sharing one signature.

    `REGISTRY["name"]` and `REGISTRY.get_fn("name")` raise `UnknownNameError` naming the valid choices.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding `fn` under `name`; registering a name twice is an error."""

        def add(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._fns[name] = fn
            return fn

        return add

    def __getitem__(self, name: str) -> Callable:
        try:
            return self._fns[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._fns))}") from None

    def get_fn(self, name: str) -> Callable:
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fns)

    def __len__(self) -> int:
        return len(self._fns)
