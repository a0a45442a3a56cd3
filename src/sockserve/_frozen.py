"""``FrozenValue``: the base of sockserve's small public value classes
(``Limits``, ``DrainReport``), what ``@dataclass(frozen=True, slots=True)``
would give them, written out: importing ``dataclasses`` (it loads
``inspect``, ``ast`` and ``dis``) cost a typical program more than the rest of
sockserve's import (issue 11).

A subclass lists its fields in ``__slots__`` and, in its constructor's
order, in ``_fields``, and sets them once with ``_freeze()``. It is then
equal and hashable by its fields, has a dataclass-style ``repr``, refuses
assignment and deletion, and pickles and copies by its constructor.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FrozenValue:
    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _freeze(self, *values: object) -> None:
        """Set the fields, in ``_fields`` order (the constructor's only write)."""
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self._values(), strict=True))
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __reduce__(self) -> tuple[type[FrozenValue], tuple[Any, ...]]:
        # The default slots pickling restores fields with setattr, which a frozen object refuses.
        return (type(self), self._values())
