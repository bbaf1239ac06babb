"""The JSONL file backend: ``FileEventJournal`` and the modules it is made of (``journal``,
``commit`` for group commit, ``recovery`` for the lock and torn tails, ``index``, ``scan``,
``subscribe``, ``snapshots``). The line format itself is ``eventstore.jsonl``."""

from .journal import DEFAULT_PATH, FileEventJournal

__all__ = ["DEFAULT_PATH", "FileEventJournal"]
