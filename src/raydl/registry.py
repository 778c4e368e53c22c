"""A tiny name -> factory registry. Each family keeps its own instance beside what it registers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

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


def param_errors(registry: Registry, section: str, key: str, default: str, raw: Any) -> list[tuple[tuple, str, Any]]:
    """(location, message, input) of every problem in a raw spec section that names a registered
    component by `key` and gives its parameters beside it (`model: {name, ...}`); the entries of
    `registry` declare their parameters as a pydantic schema (`entry.params`)."""
    from pydantic import ValidationError

    if not isinstance(raw, Mapping) or not isinstance(raw.get(key, default), str):
        return []  # the spec's own validation reports the section's shape
    name = raw.get(key, default)
    if name not in registry:
        return [((section, key), f"unknown {registry.kind} {name!r}; valid: {', '.join(registry.names())}", None)]
    params = registry.get(name).params
    try:
        params.model_validate({k: v for k, v in raw.items() if k != key})
    except ValidationError as e:
        known = ", ".join(params.model_fields) or "none"
        return [((section, *err["loc"]),
                 f"unknown parameter of {registry.kind} {name} (its parameters: {known})" if err["type"] == "extra_forbidden"
                 else err["msg"].removeprefix("Value error, "),
                 None if err["type"] in ("extra_forbidden", "missing") else err.get("input"))
                for err in e.errors()]
    return []
