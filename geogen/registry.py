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
        Modules imported (by name, with :func:`importlib.import_module`) on first lookup;
        importing them registers their factories, so the module that owns the registry never
        imports them. A module that does not exist is skipped (it may come with an optional
        part of the package).
    name_attr
        Attribute set to the registered name on registered classes (``"name"``; sources use
        ``"kind"``), or ``None`` to set none.
    case_insensitive
        Look names up case-insensitively (:meth:`names` still lists them as registered).
    """

    def __init__(
        self,
        kind: str,
        error: type[Exception] = ValueError,
        builtin_modules: Sequence[str] = (),
        *,
        name_attr: str | None = "name",
        case_insensitive: bool = False,
    ) -> None:
        self.kind = kind
        self.error = error
        self._builtin = tuple(builtin_modules)
        self._loaded = False
        self._name_attr = name_attr
        self._case_insensitive = case_insensitive
        self._factories: dict[str, Callable[..., T]] = {}
        self._names: dict[str, str] = {}  # lookup key -> name as registered

    def _key(self, name: str) -> str:
        return name.lower() if self._case_insensitive else name

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory under ``name`` (sets ``cls.<name_attr>``).

        Raises
        ------
        ValueError
            If another factory is already registered under ``name``.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = self._key(name)
            registered = self._factories.get(key)
            if registered is not None and registered is not factory:
                owner = getattr(registered, "__qualname__", repr(registered))
                raise ValueError(f"{self.kind} {name!r} is already registered by {owner}")
            if isinstance(factory, type) and self._name_attr is not None:
                setattr(factory, self._name_attr, name)
            self._factories[key] = factory
            self._names[key] = name
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that replace a factory)."""
        key = self._key(name)
        self._factories.pop(key, None)
        self._names.pop(key, None)

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
        """Registered names, sorted (case-insensitively for a case-insensitive registry)."""
        self._load()
        return sorted(self._names.values(), key=self._key)

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and self._key(name) in self._factories

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``."""
        self._load()
        try:
            return self._factories[self._key(name)]
        except (KeyError, AttributeError):
            raise self.error(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the thing registered under ``name`` with ``kwargs``."""
        return self.factory(name)(**kwargs)
