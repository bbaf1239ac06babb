"""Which idempotency keys a scan of a journal file has passed, in 16 to 32 bytes a key: what a
reader needs to skip a line that repeats an earlier key, without keeping the keys.

A read-only file journal and the importer read files of millions of lines; the keys themselves
(a dict or set of strings) cost about 100 bytes each. Here each key is its 64-bit ``hash()`` in an
open-addressed table of machine words. Two distinct keys share a hash with odds of about n²/2⁶⁵
for a file of n keys (10⁻⁸ for a million); a hit is therefore never trusted on its own:
:class:`~eventstore.jsonl.LineDecoder` answers it by reading the lines before again with the keys
themselves, and from then on tracks the keys exactly (:meth:`KeyHashes.track_exactly`). Files this
journal writes never repeat a key, so that costs memory only for files a tool or a hand has edited.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

_WORD = (1 << 64) - 1
_FIRST_BITS = 12
key_hash: Callable[[str], int] = hash  # a module attribute, so that a test can make every key collide


class KeyHashes:
    """``add(key)``: True when no key with the same hash was added before (it is added), False for
    "perhaps seen", which the caller confirms. Once :meth:`track_exactly` has been called with the
    keys themselves, ``add`` answers exactly."""

    __slots__ = ("_table", "_mask", "_count", "exact")

    def __init__(self) -> None:
        self._table = array("Q", bytes(8 << _FIRST_BITS))
        self._mask = (1 << _FIRST_BITS) - 1
        self._count = 0
        self.exact: set[str] | None = None

    def __len__(self) -> int:
        return len(self.exact) if self.exact is not None else self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the table (the exact set, when there is one, is not counted)."""
        return self._table.itemsize * len(self._table)

    def add(self, key: str) -> bool:
        exact = self.exact
        if exact is not None:
            if key in exact:
                return False
            exact.add(key)
            return True
        value = key_hash(key) & _WORD or 1  # 0 marks an empty slot
        table, mask = self._table, self._mask
        slot = value & mask
        while stored := table[slot]:
            if stored == value:
                return False
            slot = (slot + 1) & mask
        table[slot] = value
        self._count += 1
        if self._count * 2 > len(table):  # at most half full: short probe runs for new keys
            self._grow()
        return True

    def __contains__(self, key: object) -> bool:
        """Exactly, once tracking exactly; before that, a key whose hash was added (n/2⁶⁴ odds of a
        wrong yes)."""
        if self.exact is not None:
            return key in self.exact
        if not isinstance(key, str):
            return False
        value = key_hash(key) & _WORD or 1
        table, mask = self._table, self._mask
        slot = value & mask
        while stored := table[slot]:
            if stored == value:
                return True
            slot = (slot + 1) & mask
        return False

    def track_exactly(self, keys: set[str]) -> None:
        """From now on, keep the keys themselves: ``keys`` are those added so far."""
        self.exact = keys
        self._table = array("Q")
        self._mask = 0

    def _grow(self) -> None:
        old = self._table
        self._table = table = array("Q", bytes(16 * len(old)))
        self._mask = mask = len(table) - 1
        for value in old:
            if value:
                slot = value & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = value
