"""Extension points: vote methods, training methods and tasks, each registered beside its code.

A ``Registry`` maps a name (the config value: ``vote.method: weighted``) to what the name means
(a ``VoteMethod``, a ``TrainMethod``, a task class). The code registers itself where it is defined::

    @TASKS.register("multiplication")
    class Multiplication: ...

so adding one touches its own module, its test and its config (docs/extending.md). Config validates
against the registry, and the stages look their method up in it instead of an if-chain.

The registries sit at the bottom of the import graph (config imports them; the stages import config),
so a registry finds its entries by importing the modules that define them: every module of
``package`` (a new task is one new file in ``flywheel/tasks/``) or the listed ``modules``. That import
happens on the first lookup, not when this module loads.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from flywheel.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry for one config key (``key``), filled by ``register`` in the modules it loads."""

    def __init__(self, key: str, *, package: str | None = None, modules: tuple[str, ...] = ()):
        self.key = key
        self._package = package
        self._modules = modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on the class, function or ``dataclass`` instance factory."""

        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        """Register an entry that is a value rather than a definition (``VOTE_METHODS.add("majority", ...)``)."""
        return self.register(name)(entry)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (the default first)."""
        self._load()
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry for ``name``; a one-line ``ConfigError`` naming the key and the known names otherwise."""
        self._load()
        if name not in self._entries:
            raise ConfigError(self.key, f"must be one of {', '.join(self._entries)}")
        return self._entries[name]

    def check(self, name: str) -> None:
        """Config validation: ``name`` is registered."""
        self.get(name)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        modules = list(self._modules)
        if self._package:
            package = importlib.import_module(self._package)
            modules += [f"{self._package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                        if not m.name.startswith("_")]
        for module in modules:
            importlib.import_module(module)


# The three extension points. Their entries: flywheel.stages.vote (VoteMethod), flywheel.stages.train
# (TrainMethod) and one module per task in flywheel/tasks/ (a class following tasks.base.Task).
VOTE_METHODS: Registry = Registry("vote.method", modules=("flywheel.stages.vote",))
TRAIN_METHODS: Registry = Registry("train.method", modules=("flywheel.stages.train",))
TASKS: Registry = Registry("task", package="flywheel.tasks")
