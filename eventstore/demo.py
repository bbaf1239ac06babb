"""``eventstore demo``: the credit system on the configured backend, with measured figures."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from .base import BaseEventJournal
from .credits import BALANCES, MINTED, SPENT, CreditLedger, Overdraft
from .projections import Projection, project


async def _workload(ledger: CreditLedger, agents: list[str], events: int, workers: int, seed: int) -> int:
    """Concurrent mints, spends and transfers until about ``events`` events are written."""
    written = 0

    async def worker(rng: random.Random) -> None:
        nonlocal written
        while written < events:
            roll = rng.random()
            try:
                if roll < 0.7:
                    source, target = rng.sample(agents, 2)
                    await ledger.transfer(source, target, rng.randint(1, 40))
                    written += 2
                elif roll < 0.85:
                    await ledger.mint(rng.choice(agents), rng.randint(10, 100))
                    written += 1
                else:
                    await ledger.spend(rng.choice(agents), rng.randint(1, 60))
                    written += 1
            except Overdraft:
                pass

    await asyncio.gather(*(worker(random.Random(seed + i)) for i in range(workers)))
    return written


def _totals() -> Projection[dict[str, int]]:
    def fold(state: dict[str, int], event):  # type: ignore[no-untyped-def]
        if event.event_type in (MINTED, SPENT):
            state[event.event_type] = state.get(event.event_type, 0) + event.payload["amount"]
        return state

    return Projection(name="totals", initial=dict, apply=fold)


async def run(journal: BaseEventJournal, *, events: int, agent_count: int, workers: int) -> bool:
    run_id = uuid.uuid4().hex[:8]
    before = journal.get_metrics()["total_events"]
    ledger = CreditLedger(journal)
    rng = random.Random(run_id)
    agents = [f"agent-{run_id}-{i:04d}" for i in range(agent_count)]

    started = time.perf_counter()
    for agent in agents:
        await ledger.create_agent(agent, skill_level=round(rng.uniform(1, 10), 1))
        await ledger.mint(agent, 500)
    main_events = max(events - 2 * agent_count, 0)
    delta_events = max(main_events // 100, 50)
    written = 2 * agent_count + await _workload(ledger, agents, main_events - delta_events, workers, rng.randint(0, 10**6))
    write_seconds = time.perf_counter() - started

    # Snapshot at the current end, then more activity: what a restarted service sees.
    base = await project(journal, BALANCES, use_snapshot=False)
    await journal.save_snapshot(BALANCES.name, base.position, base.state)
    delta_started = time.perf_counter()
    written += await _workload(ledger, agents, delta_events, workers, rng.randint(0, 10**6))
    write_seconds += time.perf_counter() - delta_started

    full = await project(journal, BALANCES, use_snapshot=False)
    fast = await project(journal, BALANCES)
    totals = (await project(journal, _totals(), use_snapshot=False)).state

    balances = full.state
    minted, spent = totals.get(MINTED, 0), totals.get(SPENT, 0)
    checks = {
        "snapshot+delta state == full replay state": fast.state == full.state,
        "minted - spent == sum of balances": minted - spent == sum(balances.values()),
        "no negative balance": min(balances.values(), default=0) >= 0,
        "ledger cache == journal (this run's agents)": all(ledger.agents[a].balance == balances.get(a) for a in agents),
    }

    print(f"eventstore demo — credit system on the {journal.backend} backend ({_where(journal)})")
    print(f"journal held {before} events before this run; run {run_id}: {agent_count} agents, {workers} concurrent workers")
    print()
    rows = [
        ("events written (this run)", f"{written}"),
        ("write rate", f"{written / write_seconds:,.0f} events/s"),
        ("conflicts retried (optimistic concurrency)", f"{ledger.conflicts_retried}"),
        ("overdrafts refused", f"{ledger.overdrafts_refused}"),
        ("events in journal", f"{full.events_applied}"),
        ("full replay", f"{full.seconds * 1000:,.1f} ms ({full.events_applied} events)"),
        ("snapshot + delta replay", f"{fast.seconds * 1000:,.1f} ms (snapshot at {fast.snapshot_position}, {fast.events_applied} events after it)"),
        ("speed-up (full / snapshot+delta)", f"{full.seconds / fast.seconds:,.1f}x" if fast.seconds else "n/a"),
    ]
    _table(("figure", "measured"), rows)
    print()
    top = sorted(((b, a) for a, b in balances.items() if a in set(agents)), reverse=True)[:5]
    _table(("top agent", "balance"), [(a, f"{b:,}") for b, a in top])
    print()
    _table(("check", "result"), [(name, "ok" if ok else "FAILED") for name, ok in checks.items()])
    print(f"\ncredits minted {minted:,} − spent {spent:,} = {minted - spent:,}; sum of balances {sum(balances.values()):,}")
    return all(checks.values())


def _where(journal: BaseEventJournal) -> str:
    metrics = journal.get_metrics()
    return str(metrics.get("path") or metrics.get("database"))


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    print(f"{header[0]:<{width}}  {header[1]}")
    print(f"{'-' * width}  {'-' * max(len(header[1]), *(len(r[1]) for r in rows)) if rows else ''}")
    for left, right in rows:
        print(f"{left:<{width}}  {right}")
