"""File-journal behaviour the PostgreSQL side has no equivalent of: the OS lock, torn tails,
corrupt lines, lines from older tools, group commit."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading

import msgspec
import pytest

from eventstore import ConcurrencyError, CorruptedEventError, FileEventJournal, JournalLockedError, JournalWriteError
from eventstore.envelope import ENCODER

from .helpers import event, read_all, unstamped

HOLD_LOCK = textwrap.dedent(
    """
    import asyncio, sys, time
    from eventstore import FileEventJournal
    async def main():
        journal = FileEventJournal(sys.argv[1])
        await journal.initialize()
        print("locked", flush=True)
        time.sleep(60)
    asyncio.run(main())
    """
)


async def test_second_process_gets_journal_locked_error_naming_the_holder(tmp_path):
    path = tmp_path / "credits.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLockedError, match=f"pid {holder.pid}"):
            await FileEventJournal(path).initialize()
        reader = FileEventJournal(path, read_only=True)  # readers need no lock
        await reader.initialize()
        await reader.close()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL released the lock with the process.
    async with FileEventJournal(path) as journal:
        assert await journal.append_event(event()) is True


async def test_same_process_second_writer_is_refused_too(tmp_path):
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path):
        with pytest.raises(JournalLockedError):
            await FileEventJournal(path).initialize()


async def test_torn_tail_moves_to_a_sidecar_and_the_journal_carries_on(tmp_path):
    path = tmp_path / "credits.jsonl"
    kept = [event(entity_id="a") for _ in range(3)]
    async with FileEventJournal(path) as journal:
        for e in kept:
            await journal.append_event(e)
    torn = ENCODER.encode(event(entity_id="a"))[:37]
    with open(path, "ab") as handle:
        handle.write(torn)
    journal = FileEventJournal(path)
    await journal.initialize()
    try:
        assert journal.torn_tail_path is not None and journal.torn_tail_path.parent == tmp_path
        assert journal.torn_tail_path.read_bytes() == torn
        assert [unstamped(e) async for e in journal.read_events(skip_corrupted=False)] == kept
        assert await journal.append_event(event(entity_id="a"), expected_version=3) is True
    finally:
        await journal.close()
    assert path.read_bytes().endswith(b"\n")


async def test_corrupt_middle_line_is_skipped_and_counted_or_raised_with_line_number(tmp_path):
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as journal:
        await journal.append_event(event(payload={"i": 1}))
        await journal.append_event(event(payload={"i": 3}))
    first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + b'{"event_id": "garbage"\n' + second)  # damage in the middle
    async with FileEventJournal(path) as journal:
        assert journal.torn_tail_path is None  # a corrupt line in the middle is not a torn tail
        assert [e.payload["i"] async for e in journal.read_events()] == [1, 3]
        assert journal.get_metrics()["corrupted_skipped"] == 1
        with pytest.raises(CorruptedEventError, match=r"credits\.jsonl:2"):
            [e async for e in journal.read_events(skip_corrupted=False)]
        assert await journal.append_event(event(payload={"i": 4})) is True


async def test_lines_from_older_tools_get_position_entity_and_version(tmp_path):
    path = tmp_path / "credits.jsonl"
    legacy = [event(payload={"entity_id": "agent-1", "n": i}) for i in range(3)]
    lines = []
    for e in legacy:
        data = msgspec.json.decode(ENCODER.encode(e))
        for field in ("position", "entity_version", "entity_id"):
            data.pop(field)
        lines.append(msgspec.json.encode(data))
    path.write_bytes(b"\n".join(lines) + b"\n")
    async with FileEventJournal(path) as journal:
        stored = await read_all(journal)
        assert [(e.position, e.entity_id, e.entity_version) for e in stored] == [
            (1, "agent-1", 1), (2, "agent-1", 2), (3, "agent-1", 3)
        ]
        assert await journal.append_event(event(entity_id="agent-1"), expected_version=3) is True
        assert (await read_all(journal, after=3))[0].position == 4


async def test_explicit_null_entity_is_not_taken_from_the_payload(tmp_path):
    path = tmp_path / "credits.jsonl"
    e = event(payload={"entity_id": "inside"})
    async with FileEventJournal(path) as journal:
        await journal.append_event(e)
    async with FileEventJournal(path) as journal:
        (stored,) = await read_all(journal)
        assert stored.entity_id is None and unstamped(stored) == e


@pytest.mark.parametrize("fsync_on_loop", [False, True], ids=["fsync-thread", "fsync-on-loop"])
async def test_concurrent_appends_share_fsyncs(tmp_path, fsync_on_loop):
    async with FileEventJournal(tmp_path / "credits.jsonl", fsync_on_loop=fsync_on_loop) as journal:
        await asyncio.gather(*(journal.append_event(event()) for _ in range(200)))
        metrics = journal.get_metrics()
        assert metrics["appended"] == 200
        assert metrics["fsyncs"] < 20  # group commit: far fewer fsyncs than appends
        assert len(await read_all(journal)) == 200
        assert [e.position for e in await read_all(journal)] == list(range(1, 201))


async def test_resume_from_a_late_position_uses_the_seek_index(tmp_path):
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as journal:
        for chunk in range(5):
            await journal.append_events([event(payload={"i": chunk * 1000 + i}) for i in range(1000)])
        whole = await read_all(journal)
    async with FileEventJournal(path) as reopened:  # rebuilt by the scan at open
        for after in (0, 1023, 1024, 2500, 4999, 5000):
            assert await read_all(reopened, after=after) == whole[after:]
        assert len(reopened.index.seeks) > 3


async def test_failed_write_stores_nothing_and_journal_stays_usable(tmp_path):
    async with FileEventJournal(tmp_path / "credits.jsonl") as journal:
        await journal.append_event(event(entity_id="a"))
        real_fd = journal.group_commit.fd
        journal.group_commit.fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
        try:
            results = await asyncio.gather(
                *(journal.append_event(event(entity_id="a")) for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(r, OSError) for r in results)
        finally:
            os.close(journal.group_commit.fd)
            journal.group_commit.fd = real_fd
        assert await journal.append_event(event(entity_id="a"), expected_version=1) is True
        assert [e.entity_version for e in await read_all(journal)] == [1, 2]


class HeldFsync:
    """``os.fdatasync`` whose first call waits for ``release``, so appends queue behind a write in
    flight; with ``fail``, that call then fails with EIO: a write that reached the file but never
    became durable (the writer then cuts it off again)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(30)
            if self.fail:
                raise OSError(errno.EIO, "injected I/O error")
        return self.real(fd)


async def test_read_only_reader_never_sees_lines_before_they_are_durable(tmp_path, monkeypatch):
    """A line written but not yet fdatasynced can still be taken back (and its position handed
    out again): a reader in another process must neither read it nor count it in last_position."""
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as writer, FileEventJournal(path, read_only=True) as reader:
        await writer.append_event(event(payload={"n": 1}))
        fsync = HeldFsync(fail=True)
        monkeypatch.setattr(os, "fdatasync", fsync)
        phantom = asyncio.create_task(writer.append_event(event(payload={"phantom": True})))
        await asyncio.to_thread(fsync.entered.wait, 30)
        assert os.stat(path).st_size > writer.durable_size()  # the phantom line is in the file
        assert await reader.last_position() == 1
        assert [e.payload for e in await read_all(reader)] == [{"n": 1}]
        fsync.release.set()
        with pytest.raises(JournalWriteError):
            await phantom
        assert await writer.append_event(event(payload={"n": 2})) is True  # position 2, handed out again
        assert [(e.position, e.payload) for e in await read_all(reader)] == [(1, {"n": 1}), (2, {"n": 2})]
        assert await reader.last_position() == 2 and reader.index.corrupt_lines == 0


async def test_retry_of_an_append_still_being_written_waits_for_its_outcome(tmp_path, monkeypatch):
    """A retry whose key is staged but not durable does not answer "already stored" at once: if
    the first attempt's write fails, the retry stores the event (PostgreSQL waits the same way)."""
    async with FileEventJournal(tmp_path / "credits.jsonl") as journal:
        fsync = HeldFsync(fail=True)
        monkeypatch.setattr(os, "fdatasync", fsync)
        first, loose = event(entity_id="a"), event()  # loose: no entity
        attempt = asyncio.create_task(journal.append_events([first, loose]))
        await asyncio.to_thread(fsync.entered.wait, 30)
        retries = [asyncio.create_task(journal.append_events([first])), asyncio.create_task(journal.append_event(first)),
                   asyncio.create_task(journal.append(first))]
        # An entity-less retry with expected_version 2 is a duplicate only if its first attempt stored it.
        loose_retry = asyncio.create_task(journal.append(loose, expected_version=2))
        await asyncio.sleep(0.05)
        assert not any(r.done() for r in [*retries, loose_retry])  # they wait for the first attempt's fsync
        fsync.release.set()
        with pytest.raises(JournalWriteError):
            await attempt
        with pytest.raises(ConcurrencyError) as conflict:
            await loose_retry
        assert (conflict.value.entity_id, conflict.value.expected, conflict.value.actual) == (None, 2, 0)
        flags = [await retries[0], await retries[1], (await retries[2]).stored]
        assert flags == [[True], False, False]
        assert [unstamped(e) for e in await read_all(journal)] == [first]
        assert (await retries[2]).position == 1 and (await retries[2]).entity_version == 1


@pytest.mark.parametrize("fsync_on_loop", [False, True], ids=["fsync-thread", "fsync-on-loop"])
async def test_a_cancelled_caller_fails_no_neighbour_and_its_staged_event_is_written_once(tmp_path, monkeypatch,
                                                                                          fsync_on_loop):
    """Callers waiting on the same write each wait on their own: cancelling one cancels only its
    wait. Its event was staged with the others, so it is written with them; a retry is then a
    duplicate, not a second copy."""
    async with FileEventJournal(tmp_path / "credits.jsonl", fsync_on_loop=fsync_on_loop) as journal:
        if not fsync_on_loop:
            fsync = HeldFsync()
            monkeypatch.setattr(os, "fdatasync", fsync)
            first = asyncio.create_task(journal.append_event(event(entity_id="a")))
            await asyncio.to_thread(fsync.entered.wait, 30)  # the first write is in flight: the next ones queue
        neighbours = [event(entity_id="a") for _ in range(3)]
        cancelled = event(entity_id="b")
        tasks = [asyncio.create_task(journal.append_event(e)) for e in (neighbours[0], cancelled, *neighbours[1:])]
        await asyncio.sleep(0)  # every task has staged its event and is waiting
        tasks[1].cancel()
        if not fsync_on_loop:
            fsync.release.set()
            assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert [await t for t in (tasks[0], *tasks[2:])] == [True, True, True]
        assert await journal.append_event(cancelled) is False  # written with its neighbours
        stored = [unstamped(e) for e in await read_all(journal)]
        assert stored[-4:] == [neighbours[0], cancelled, *neighbours[1:]]
        assert stored.count(cancelled) == 1
        assert await journal.append_event(event(entity_id="a"), expected_version=4 if not fsync_on_loop else 3) is True
