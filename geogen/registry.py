"""Name -> factory registries (one per kind of thing), in the style of pysteps' ``get_method``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories registered by name; unknown names give an error listing the valid ones.

    Parameters
    ----------
    kind
        What is registered, for messages (``"forecast model"``).
    error
        Exception class raised for an unknown name.
    builtin_modules
        Modules imported on first lookup; importing them registers their factories. A module
        that does not exist is skipped (it may come with an optional part of the package).
    """

    def __init__(
        self,
        kind: str,
        error: type[Exception] = ValueError,
        builtin_modules: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.error = error
        self._builtin = tuple(builtin_modules)
        self._loaded = False
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory under ``name`` (sets ``cls.name``)."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(factory, type):
                factory.name = name  # type: ignore[attr-defined]
            self._factories[name] = factory
            return factory

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a real missing dependency inside the module
                    raise

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``."""
        self._load()
        try:
            return self._factories[name]
        except KeyError:
            raise self.error(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the thing registered under ``name`` with ``kwargs``."""
        return self.factory(name)(**kwargs)
