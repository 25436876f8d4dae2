"""Things chosen by name (backbones, face detectors, augmentations, label formats): one small registry type, so every
kind registers with a decorator, refuses a second entry under a taken name, and answers an unknown name with the list of
valid ones."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, as error messages say it (``"backbone"``, ``"face detector"``).
        plural: the plural in "valid ...: a, b" (default ``kind + "s"``).
    """

    def __init__(self, kind: str, plural: str | None = None):
        self.kind, self.plural = kind, plural or f"{kind}s"
        self.entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``.

        Raises:
            ValueError: ``name`` is taken (two entries must not silently shadow each other).
        """
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self.entries[name]!r})")
        self.entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``; returns the decorated object unchanged."""
        return lambda entry: self.add(name, entry)

    def register_named(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add`` for classes that carry their registered name as ``cls.name``."""
        def deco(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return self.add(name, cls)

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.entries)

    def get(self, name: str, hint: str = "") -> T:
        """The entry registered as ``name``.

        Raises:
            ValueError: unknown ``name``; the message lists the valid names, then ``hint``.
        """
        try:
            return self.entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"
                             f"{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries
