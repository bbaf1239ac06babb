"""Snapshots and projections in both backends: snapshot + delta always equals a full replay."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import FileEventJournal
from eventstore.credits import BALANCES, CreditLedger, Overdraft
from eventstore.demo import run
from eventstore.projections import project

from .helpers import event


async def test_snapshot_round_trip_and_only_newer_replaces(journal):
    assert await journal.load_snapshot("balances") is None
    await journal.save_snapshot("balances", 10, {"a": 1, "b": [1, 2]})
    await journal.save_snapshot("balances", 5, {"a": 999})  # older: ignored
    snap = await journal.load_snapshot("balances")
    assert snap is not None and (snap.name, snap.position, snap.state) == ("balances", 10, {"a": 1, "b": [1, 2]})
    assert snap.created_at.utcoffset() is not None and snap.created_at.utcoffset().total_seconds() == 0
    await journal.save_snapshot("balances", 11, {"a": 2})
    assert (await journal.load_snapshot("balances")).state == {"a": 2}


async def test_corrupt_snapshot_file_is_ignored_and_replay_falls_back(tmp_path, caplog):
    async with FileEventJournal(tmp_path / "credits.jsonl") as journal:
        ledger = CreditLedger(journal)
        await ledger.create_agent("a", 5.0)
        await ledger.mint("a", 100)
        full = await project(journal, BALANCES, use_snapshot=False)
        await journal.save_snapshot("balances", full.position, {"a": 10**6})  # a lie, then damage it
        snapshot_file = next(journal.snapshot_folder.iterdir())
        data = bytearray(snapshot_file.read_bytes())
        data[data.index(b"1000000")] = ord("9")  # same shape, wrong checksum
        snapshot_file.write_bytes(bytes(data))
        assert await journal.load_snapshot("balances") is None
        assert "corrupt" in caplog.text
        result = await project(journal, BALANCES)
        assert result.state == {"a": 100} and result.snapshot_position is None
        snapshot_file.write_bytes(b"\x00garbage")
        assert await journal.load_snapshot("balances") is None


async def test_project_saves_every_n_and_resumes(journal):
    for i in range(25):
        await journal.append_event(event("credits.minted", {"amount": i}, entity_id=f"agent-{i % 3}"))
    first = await project(journal, BALANCES, snapshot_every=10)
    assert first.snapshots_saved == 2 and first.events_applied == 25
    snap = await journal.load_snapshot("balances")
    assert snap is not None and snap.position == (await _positions(journal))[19]
    resumed = await project(journal, BALANCES)
    assert resumed.events_applied == 5 and resumed.state == first.state


async def _positions(journal):
    return [e.position async for e in journal.read_events()]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 50), st.booleans()), min_size=1, max_size=40),
    cut=st.integers(0, 40),
)
def test_snapshot_plus_delta_equals_full_replay(open_journal, amounts, cut):
    # Examples share the store; a projection name of its own keeps their snapshots apart.
    projection = dataclasses.replace(BALANCES, name=f"balances-{uuid.uuid4().hex}")

    async def scenario() -> None:
        journal = await open_journal()
        try:
            for agent, amount, mint in amounts:
                kind = "credits.minted" if mint else "credits.spent"
                await journal.append_event(event(kind, {"amount": amount}, entity_id=f"agent-{agent}"))
            positions = [e.position async for e in journal.read_events()][-len(amounts):]
            upto = positions[min(cut, len(positions)) - 1] if cut else 0
            upto = upto or (positions[0] - 1)
            partial = projection.initial()
            async for e in journal.read_events():
                if e.position <= upto:
                    partial = projection.apply(partial, e)
            await journal.save_snapshot(projection.name, upto, partial)
            full = await project(journal, projection, use_snapshot=False)
            fast = await project(journal, projection)
            assert fast.state == full.state
            assert fast.events_applied == len(positions) - min(cut, len(positions))
        finally:
            await journal.close()

    # hypothesis drives examples synchronously: each runs on a loop of its own.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def test_transfers_never_overdraw_under_concurrency(open_journal):
    journal = await open_journal(pool_size=10)
    ledger = CreditLedger(journal)
    for agent in ("a", "b", "c"):
        await ledger.create_agent(agent, 3.0)
        await ledger.mint(agent, 100)

    async def drain(source: str, target: str) -> None:
        for _ in range(40):
            try:
                await ledger.transfer(source, target, 7)
            except Overdraft:
                pass

    await asyncio.gather(*(drain(s, t) for s, t in [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")] * 2))
    state = (await project(journal, BALANCES, use_snapshot=False)).state
    assert sum(state.values()) == 300 and min(state.values()) >= 0
    assert state == {a: ledger.agents[a].balance for a in state}


async def test_demo_invariants_hold(open_journal, capsys):
    journal = await open_journal(pool_size=10)
    assert await run(journal, events=1500, agent_count=8, workers=6) is True
    out = capsys.readouterr().out
    assert "speed-up (full / snapshot+delta)" in out and "FAILED" not in out
