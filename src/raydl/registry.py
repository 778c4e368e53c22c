"""A tiny name -> factory registry. Each family keeps its own instance beside what it registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from raydl.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, where: str = "") -> T:
        try:
            return self._items[name]
        except KeyError:
            at = f"{where}: " if where else ""
            raise UnknownNameError(
                f"{at}unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
