"""Name -> (builder, config class) registries, in the spirit of timm's ``create_model``.

Students and teachers register themselves with a decorator; configs select them by ``name``. Adding a
component is one file plus one ``@REGISTRY.register(...)`` line, and the registry's config class feeds the
typed config schema (see :mod:`lit3d.config`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; a one-line plain message reads better
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    config_cls: type


class Registry(Generic[T]):
    """A named collection of builders, each taking its own config dataclass."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
        def decorator(builder: Callable[[Any], T]) -> Callable[[Any], T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, builder, config_cls)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def config(self, name: str, **overrides: Any) -> Any:
        """Default config of ``name`` with ``overrides`` applied."""
        return self.get(name).config_cls(name=name, **overrides)

    def create(self, cfg: Any, **kwargs: Any) -> T:
        """Build the component that ``cfg.name`` selects from its config (``kwargs`` go to the builder)."""
        return self.get(cfg.name).builder(cfg, **kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
