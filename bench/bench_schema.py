"""What the journal's schema costs at scale: disk, WAL, GIN maintenance, and one entity's append ceiling.

Why: docs/operations.md needs disk and WAL per million events, and what the indexes, the
append function and the per-entity advisory lock cost against a bare insert, measured rather
than guessed. The schema is whatever ``upgrade_schema`` (the migrations present at run time)
builds, in a fresh database this script creates and drops.

Measured, in order:
1. Load: N rows (``--rows``, 1M) into ``credit_events`` as the owner, ``INSERT … SELECT`` in chunks of
   100k: 20 event types (skewed, the rare one 1%), ``--entities`` entity ids (100k; skewed, dense
   versions 1..n each by ``row_number()``), random uuids, a ~150-byte jsonb payload, increasing
   timestamps; then VACUUM ANALYZE. The indexes are built by these inserts, as appends build them.
2. Size of the table and of every index on it: MiB and bytes per row.
3. WAL per append and appends/s: ``PostgresEventJournal.append_event`` from 4 concurrent callers,
   ``pg_wal_lsn_diff`` around the run, a CHECKPOINT just before it: the first change of each page
   after a checkpoint writes a full-page image, so a short run right after one is the costly end
   (the figure without full-page images is the cheap end, a long checkpoint interval).
4. The raw reference for 3: the same rows, a prepared ``INSERT … ON CONFLICT (idempotency_key) DO
   NOTHING`` on 4 asyncpg connections into ``raw_events``, a copy of the loaded table with only the
   primary key and the (idempotency_key) and (entity_id, entity_version) unique indexes.
5. Append latency with ``idx_credit_events_payload_gin`` at fastupdate on and off (a small
   ``gin_pending_list_limit`` so the pending list flushes many times); the migrations' options restored.
6. Hot entity: appends/s to one entity_id from 8 callers (they queue on its advisory lock), and to 8.
7. EXPLAIN (ANALYZE, BUFFERS) of the first page of ``query_events(event_type=<the 1% type>)``.

Steps 3-6 run ``--rounds`` rounds (2), their variants alternated within each round, so drift in the
shared machine hits both alike; the best round's appends/s is kept, latency percentiles are over all
rounds' appends, WAL per append is their mean. A round in which a checkpoint not ours ran is run again.
WAL positions are cluster-wide: the run says whether other databases committed or a checkpoint ran
meanwhile, and with pg_walinspect it also sums this database's own WAL records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from common import percentile

import eventstore
from eventstore import EventEnvelope, PostgresEventJournal
from eventstore.postgres.queries import QUERIES
from eventstore.postgres.schema import upgrade_schema

GIN = "idx_credit_events_payload_gin"
ATTEMPTS = 3  # a round disturbed by an outside checkpoint is run again, at most ATTEMPTS - 1 times in all
CHUNK = 100_000
TYPES = [  # TYPES[0] is the rare one (1% of rows); the other 19 are skewed (about 23% down to 3%)
    "credits.limit_changed", "credits.spent", "credits.minted", "credits.transfer_debited",
    "credits.transfer_credited", "agent.heartbeat", "credits.reserved", "credits.released",
    "agent.skill_updated", "credits.refunded", "agent.task_assigned", "agent.task_completed",
    "credits.fee_charged", "credits.interest_accrued", "agent.rated", "credits.expired",
    "agent.suspended", "agent.reinstated", "credits.burned", "agent.created",
]
RARE = TYPES[0]
COLUMNS = ('event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id, correlation_id, '
           'causation_id, payload, entity_id, entity_version')
RAW_INSERT = f"""INSERT INTO raw_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"""

PLAN_SQL = """INSERT INTO bench_plan (g, e, v, ti)
SELECT g, e, row_number() OVER (PARTITION BY e ORDER BY g), ti
  FROM (SELECT g,
               CASE WHEN g <= $2 THEN g - 1 ELSE floor($2 * (random() ^ 2))::int END AS e,
               CASE WHEN random() < 0.01 THEN 1 ELSE 2 + floor(19 * (random() ^ 2))::int END AS ti
          FROM generate_series(1, $1) AS g) AS s"""
LOAD_SQL = f"""INSERT INTO credit_events ({COLUMNS}, created_at)
SELECT s.id, s.id::text, s.type, 1, s.ts, 'service-' || (s.g % 7), gen_random_uuid(), NULL,
       jsonb_build_object('agent_id', s.entity, 'amount', floor(random() * 100000)::int, 'currency', 'EUR',
                          'balance_after', floor(random() * 1000000)::int,
                          'reference', left(md5(s.g::text || 'ref'), 16),
                          'memo', s.type || ' for cost centre ' || (s.g % 50)),
       s.entity, s.v, s.ts + interval '2 milliseconds'
  FROM (SELECT p.g, p.v, gen_random_uuid() AS id, ($3::text[])[p.ti] AS type,
               'agent-' || lpad(p.e::text, 6, '0') AS entity,
               $4::timestamptz + p.g * interval '100 milliseconds' AS ts
          FROM bench_plan AS p
         WHERE p.g > $1 AND p.g <= $2) AS s
 ORDER BY s.g"""


# -- helpers -----------------------------------------------------------------------------------


def db_url(server_url: str, name: str) -> str:
    """The server URL pointed at database ``name`` (a ``+asyncpg`` scheme is accepted)."""
    parts = urlsplit(server_url.replace("+asyncpg", ""))
    return urlunsplit(parts._replace(path="/" + name))


def summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    s = sorted(latencies)
    return {"appends": len(s), "seconds": elapsed, "appends_per_s": len(s) / elapsed,
            "p50_ms": percentile(s, 50) * 1000, "p99_ms": percentile(s, 99) * 1000, "max_ms": s[-1] * 1000,
            "_latencies": s}


async def alternate(variants: list[tuple[str, Any]], rounds: int) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """``rounds`` rounds, each running every variant once in order; a round in which an outside
    checkpoint landed (its full-page images restart) is run again, at most ATTEMPTS - 1 times in all.
    Returns each variant's kept runs and the number of rounds run again."""
    kept: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    again = 0
    while len(next(iter(kept.values()))) < rounds:
        got = {}
        for label, run in variants:
            got[label] = await run()
        if again < ATTEMPTS - 1 and any(r.get("checkpoints_during_run") for r in got.values()):
            again += 1
            print("  an outside checkpoint ran during this round: running it again with fresh rows", flush=True)
            continue
        for label, r in got.items():
            kept[label].append(r)
    return kept, again


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one variant: appends/s of each and the best (the least disturbed by the shared machine),
    latency percentiles over all their appends, WAL per append averaged."""
    pooled = sorted(x for r in runs for x in r.pop("_latencies"))
    n = len(runs)
    out: dict[str, Any] = {
        "rounds": runs, "appends_per_s_best": max(r["appends_per_s"] for r in runs),
        "appends_per_s_each": [r["appends_per_s"] for r in runs], "appends": len(pooled),
        "p50_ms": percentile(pooled, 50) * 1000, "p99_ms": percentile(pooled, 99) * 1000, "max_ms": pooled[-1] * 1000,
    }
    if "wal_bytes" in runs[0]:
        out["wal_bytes_per_append"] = sum(r["wal_bytes_per_append"] for r in runs) / n
        out["checkpoints_during_runs"] = sum(r["checkpoints_during_run"] for r in runs)
        out["other_databases_committed"] = sum(r["other_databases_committed"] for r in runs)
    if "this_db" in runs[0]:
        for key in ("record_bytes_per_append", "without_fpi_bytes_per_append", "fpi_share"):
            out[f"this_db_{key}"] = sum(r["this_db"][key] for r in runs) / n
    return out


def combined_line(label: str, c: dict[str, Any]) -> str:
    each = ", ".join(f"{x:,.0f}" for x in c["appends_per_s_each"])
    text = (f"  {label}: best {c['appends_per_s_best']:,.0f} appends/s (rounds: {each}); latency over all "
            f"{c['appends']:,} appends p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, max {c['max_ms']:.1f} ms")
    if "wal_bytes_per_append" in c:
        text += f"\n      WAL {c['wal_bytes_per_append']:,.0f} B/append (cluster-wide, mean of rounds)"
    if "this_db_record_bytes_per_append" in c:
        text += (f"; this database's records {c['this_db_record_bytes_per_append']:,.0f} B/append, "
                 f"{c['this_db_fpi_share']:.0%} full-page images, {c['this_db_without_fpi_bytes_per_append']:,.0f} "
                 "B/append without them")
    return text


async def drive(callers: int, items: list[Any], call: Any) -> tuple[list[float], float]:
    """``items`` split round-robin over ``callers`` tasks, each awaiting ``call(item)`` one after another;
    (every call's latency, wall time of the whole)."""
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker(share: list[Any]) -> None:
        for item in share:
            t0 = clock()
            await call(item)
            latencies.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(worker(items[k::callers]) for k in range(callers)))
    return latencies, clock() - start


class Events:
    """Envelopes shaped like the loaded rows: the same types, skew, entity ids and payload keys."""

    def __init__(self, entities: int, seed: int) -> None:
        self.entities, self.rng, self.n = entities, random.Random(seed), 0

    def type(self) -> str:
        return RARE if self.rng.random() < 0.01 else TYPES[1 + int(19 * self.rng.random() ** 2)]

    def make(self, count: int, entity: str | None = None) -> list[EventEnvelope]:
        out = []
        for _ in range(count):
            self.n += 1
            kind = self.type()
            agent = entity or f"agent-{int(self.entities * self.rng.random() ** 2):06d}"
            payload = {"agent_id": agent, "amount": self.rng.randrange(100_000), "currency": "EUR",
                       "balance_after": self.rng.randrange(1_000_000), "reference": f"{self.rng.getrandbits(64):016x}",
                       "memo": f"{kind} for cost centre {self.n % 50}"}
            out.append(EventEnvelope.new(kind, payload, actor_id=f"service-{self.n % 7}", entity_id=agent))
        return out


class Wal:
    """WAL written around a measured run: a CHECKPOINT first, then ``pg_current_wal_lsn()`` before and after
    (cluster-wide). With pg_walinspect, also the records of this database alone: those touching its
    relations plus the commit records of their transactions (a temporary replication slot keeps the
    segments until they are read), so other databases' work can be told apart."""

    def __init__(self, owner: asyncpg.Connection, dbname: str, walinspect: bool) -> None:
        self.owner, self.dbname, self.walinspect = owner, dbname, walinspect

    async def counters(self) -> tuple[dict[int, int], int]:
        """(commits per other database, checkpoints so far)."""
        rows = await self.owner.fetch("SELECT datid, xact_commit FROM pg_stat_database "
                                      "WHERE datname IS NOT NULL AND datname <> $1", self.dbname)
        return ({r["datid"]: r["xact_commit"] for r in rows},
                await self.owner.fetchval("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"))

    async def measure(self, run: Any) -> dict[str, Any]:
        others, checkpoints = await self.counters()
        await self.owner.execute("CHECKPOINT")
        slot = f"es_bench_schema_{os.getpid()}"
        if self.walinspect:
            await self.owner.execute("SELECT pg_create_physical_replication_slot($1, true, true)", slot)
        try:
            lsn0 = await self.owner.fetchval("SELECT pg_current_wal_lsn()::text")
            latencies, elapsed = await run()
            lsn1 = await self.owner.fetchval("SELECT pg_current_wal_lsn()::text")
            wal = int(await self.owner.fetchval("SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)",
                                                lsn1, lsn0))
            await asyncio.sleep(1.1)  # other backends report their counters at most once a second
            others_after, checkpoints_after = await self.counters()
            out: dict[str, Any] = summary(latencies, elapsed)
            out |= {"wal_bytes": wal, "wal_bytes_per_append": wal / len(latencies),
                    # commits in the other databases (those dropped meanwhile are not counted)
                    "other_databases_committed": sum(n - others.get(d, 0) for d, n in others_after.items()),
                    "checkpoints_during_run": checkpoints_after - checkpoints - 1}  # - 1: ours, just before
            if self.walinspect:
                out["this_db"] = await self.this_database(lsn0, lsn1, len(latencies))
        finally:
            if self.walinspect:
                await self.owner.execute("SELECT pg_drop_replication_slot($1)", slot)
        return out

    async def this_database(self, lsn0: str, lsn1: str, appends: int) -> dict[str, Any]:
        rows = await self.owner.fetch(
            """WITH r AS (SELECT xid::text AS xid, resource_manager AS rmgr, record_length, fpi_length, block_ref
                            FROM pg_get_wal_records_info($1::text::pg_lsn,
                                                         least($2::text::pg_lsn, pg_current_wal_flush_lsn()))),
                    mine AS (SELECT DISTINCT xid FROM r WHERE block_ref ~ $3 AND xid <> '0')
             SELECT rmgr, count(*) AS records, sum(record_length) AS bytes, sum(fpi_length) AS fpi
               FROM r WHERE block_ref ~ $3 OR xid IN (SELECT xid FROM mine)
              GROUP BY rmgr ORDER BY bytes DESC""",
            lsn0, lsn1, f"rel [0-9]+/{await self.owner.fetchval('SELECT oid FROM pg_database WHERE datname = $1', self.dbname)}/")
        total = sum(int(r["bytes"]) for r in rows)
        fpi = sum(int(r["fpi"]) for r in rows)
        return {"record_bytes": total, "record_bytes_per_append": total / appends, "fpi_bytes": fpi,
                "fpi_share": fpi / max(1, total), "without_fpi_bytes_per_append": (total - fpi) / appends,
                "by_rmgr": {r["rmgr"]: {"records": r["records"], "bytes": int(r["bytes"]), "fpi_bytes": int(r["fpi"])}
                            for r in rows}}


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def line_for(label: str, r: dict[str, Any]) -> str:
    text = (f"  {label}: {r['appends']:,} appends in {r['seconds']:.1f} s = {r['appends_per_s']:,.0f} appends/s; "
            f"latency p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms")
    if "wal_bytes" in r:
        text += f"\n      WAL {r['wal_bytes']:,} B = {r['wal_bytes_per_append']:,.0f} B/append"
        text += " (pg_wal_lsn_diff, cluster-wide)"
        if "this_db" in r:
            d = r["this_db"]
            top = ", ".join(f"{k} {v['bytes'] / r['appends']:,.0f}" for k, v in d["by_rmgr"].items()
                            if v["bytes"] >= r["appends"])
            text += (f"\n      this database's WAL records: {d['record_bytes_per_append']:,.0f} B/append, "
                     f"{d['fpi_share']:.0%} of it full-page images ({d['without_fpi_bytes_per_append']:,.0f} B/append "
                     f"without them); by resource manager, B/append: {top}")
        if r["other_databases_committed"] or r["checkpoints_during_run"]:
            text += (f"\n      NOTE: meanwhile other databases committed {r['other_databases_committed']} transactions, "
                     f"and {r['checkpoints_during_run']} checkpoint(s) ran")
    return text


# -- the steps ---------------------------------------------------------------------------------


async def load(owner: asyncpg.Connection, rows: int, entities: int, seed: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    await owner.execute("SELECT setseed($1)", seed)
    await owner.execute("CREATE UNLOGGED TABLE bench_plan (g INTEGER, e INTEGER, v INTEGER, ti INTEGER)")
    await owner.execute(PLAN_SQL, rows, entities)
    start = datetime.now(UTC) - timedelta(milliseconds=100 * (rows + 1))
    for lo in range(0, rows, CHUNK):
        await owner.execute(LOAD_SQL, lo, min(rows, lo + CHUNK), TYPES, start)
        print(f"  loaded {min(rows, lo + CHUNK):,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    await owner.execute("DROP TABLE bench_plan")
    insert_s = time.perf_counter() - t0
    await owner.execute("VACUUM ANALYZE credit_events")
    total_s = time.perf_counter() - t0
    shape = await owner.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT entity_id) AS entities, max(entity_version) AS max_version,
                  avg(octet_length(payload::text)) AS payload_text_bytes, avg(pg_column_size(payload)) AS payload_jsonb_bytes,
                  avg(pg_column_size(e.*)) AS row_bytes, count(DISTINCT event_type) AS types,
                  avg((event_type = $1)::int) AS rare_share
             FROM credit_events AS e""", RARE)
    streams = await owner.fetchval(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY c) FROM "
        "(SELECT count(*) AS c FROM credit_events GROUP BY entity_id) AS s")
    return {"rows": shape["n"], "insert_seconds": insert_s, "with_vacuum_analyze_seconds": total_s,
            "rows_per_s": rows / insert_s, "entities": shape["entities"], "max_entity_version": shape["max_version"],
            "median_events_per_entity": streams, "event_types": shape["types"], "rare_type": RARE,
            "rare_type_share": float(shape["rare_share"]), "payload_text_bytes_avg": float(shape["payload_text_bytes"]),
            "payload_jsonb_bytes_avg": float(shape["payload_jsonb_bytes"]), "row_bytes_avg": float(shape["row_bytes"])}


async def sizes(owner: asyncpg.Connection, table: str) -> dict[str, Any]:
    rows = await owner.fetchval(f"SELECT count(*) FROM {table}")
    heap = await owner.fetchrow(
        """SELECT pg_relation_size(c.oid) AS heap, pg_relation_size(c.oid, 'fsm') + pg_relation_size(c.oid, 'vm') AS maps,
                  coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast,
                  pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
             FROM pg_class AS c WHERE c.oid = $1::regclass""", table)
    indexes = await owner.fetch(
        """SELECT c.relname, am.amname, pg_relation_size(c.oid) AS bytes
             FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_am AS am ON am.oid = c.relam
            WHERE i.indrelid = $1::regclass ORDER BY bytes DESC, c.relname""", table)
    return {"rows": rows, "heap_bytes": heap["heap"], "fsm_vm_bytes": heap["maps"], "toast_bytes": heap["toast"],
            "indexes_bytes": heap["indexes"], "total_bytes": heap["total"],
            "indexes": {r["relname"]: {"method": r["amname"], "bytes": r["bytes"]} for r in indexes}}


def print_sizes(title: str, s: dict[str, Any]) -> None:
    n = max(1, s["rows"])
    print(f"\n{title} ({s['rows']:,} rows)")
    print(f"  {'relation':48} {'size':>12} {'bytes/row':>10}")
    items = [("table heap (main fork)", s["heap_bytes"]), ("table FSM + visibility map", s["fsm_vm_bytes"]),
             ("TOAST (table + index)", s["toast_bytes"])]
    items += [(f"{name} ({ix['method']})", ix["bytes"]) for name, ix in s["indexes"].items()]
    items += [("all indexes", s["indexes_bytes"]), ("total (pg_total_relation_size)", s["total_bytes"])]
    for label, size in items:
        print(f"  {label:48} {mb(size):>12} {size / n:10.1f}")


async def explain_rare(url: str, journal: PostgresEventJournal) -> dict[str, Any]:
    """The first page of query_events(event_type=RARE, limit=1000) as the journal runs it: one call with the
    journal's fetch methods watched gives the statement and values it sends; EXPLAIN (ANALYZE, BUFFERS) of
    exactly that, twice, on a new connection (a fresh statement is planned for its values, as the journal's
    are); then 5 timed journal calls."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    conns = journal.connections
    for method in ("fetch", "fetch_planned"):
        original = getattr(conns, method, None)
        if original is not None:
            async def spy(sql: str, *args: Any, _original: Any = original) -> Any:
                sent.append((sql, args))
                return await _original(sql, *args)
            setattr(conns, method, spy)
    try:
        got = [e async for e in journal.query_events(event_type=RARE, limit=1000)]
    finally:
        for method in ("fetch", "fetch_planned"):
            vars(conns).pop(method, None)
    if not sent:
        return {"skipped": "the journal sent no statement through connections.fetch/fetch_planned"}
    sql, params = sent[0]
    names = [n for n in QUERIES.available_queries if getattr(getattr(QUERIES, n), "sql", None) == sql]
    conn = await asyncpg.connect(url)
    runs = []
    try:
        for _ in range(2):
            doc = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *params))[0]
            plan = doc["Plan"]
            runs.append({"execution_ms": doc["Execution Time"], "planning_ms": doc["Planning Time"],
                         "shared_hit_blocks": plan.get("Shared Hit Blocks"), "shared_read_blocks": plan.get("Shared Read Blocks"),
                         "planning_shared_hit_blocks": doc.get("Planning", {}).get("Shared Hit Blocks"),
                         "planning_shared_read_blocks": doc.get("Planning", {}).get("Shared Read Blocks"),
                         "rows": plan.get("Actual Rows"), "nodes": nodes(plan), "plan": doc})
    finally:
        await conn.close()
    clock = time.perf_counter
    ms = []
    for _ in range(5):
        t0 = clock()
        got = [e async for e in journal.query_events(event_type=RARE, limit=1000)]
        ms.append((clock() - t0) * 1000)
    return {"query": names[0] if names else "?", "sql": sql, "params": params, "explain": runs,
            "journal_first_page_ms_p50": sorted(ms)[2], "journal_rows": len(got)}


def nodes(plan: dict[str, Any], depth: int = 0) -> list[str]:
    name = plan["Node Type"] + (f" using {plan['Index Name']}" if "Index Name" in plan else "")
    name += f" on {plan['Relation Name']}" if "Relation Name" in plan and "Index Name" not in plan else ""
    out = [f"{'  ' * depth}{name} (rows {plan.get('Actual Rows')}, loops {plan.get('Actual Loops')}, "
           f"{plan.get('Actual Total Time')} ms, hit {plan.get('Shared Hit Blocks')} read {plan.get('Shared Read Blocks')})"]
    for child in plan.get("Plans", []):
        out += nodes(child, depth + 1)
    return out


async def raw_copy(owner: asyncpg.Connection) -> None:
    """raw_events: credit_events' columns, defaults and identity, only the primary key and the two
    unique indexes an append needs, and the same loaded rows (so its indexes are as large)."""
    await owner.execute("CREATE TABLE raw_events (LIKE credit_events INCLUDING DEFAULTS INCLUDING IDENTITY)")
    await owner.execute("ALTER TABLE raw_events ADD PRIMARY KEY (id), ADD UNIQUE (idempotency_key), "
                        "ADD UNIQUE (entity_id, entity_version)")
    await owner.execute("INSERT INTO raw_events SELECT * FROM credit_events ORDER BY id")
    await owner.execute("SELECT setval(pg_get_serial_sequence('raw_events', 'id'), (SELECT max(id) FROM raw_events))")
    await owner.execute("VACUUM ANALYZE raw_events")


async def raw_drive(stmts: list[Any], rows: list[asyncpg.Record]) -> tuple[list[float], float]:
    """``rows`` split round-robin over the prepared statements (one connection each), inserted one by one."""
    latencies: list[float] = []
    clock = time.perf_counter

    async def worker(stmt: Any, share: list[asyncpg.Record]) -> None:
        for row in share:
            t0 = clock()
            await stmt.fetchrow(*row)
            latencies.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(worker(stmt, rows[k::len(stmts)]) for k, stmt in enumerate(stmts)))
    return latencies, clock() - start


async def raw_connections(url: str, n: int) -> list[asyncpg.Connection]:
    conns = [await asyncpg.connect(url) for _ in range(n)]
    for conn in conns:  # the journal's binary jsonb: bytes in and out, no re-encoding
        await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda b: b"\x01" + b,
                                  decoder=lambda b: b[1:], format="binary")
    return conns


async def gin_runs(owner: asyncpg.Connection, url: str, wal: Wal, journal: PostgresEventJournal, events: Events,
                   args: argparse.Namespace) -> dict[str, Any]:
    if await owner.fetchval("SELECT to_regclass($1)", GIN) is None:
        return {"skipped": f"{GIN} does not exist in this schema"}
    original = await owner.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", GIN)
    stattuple = await owner.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pgstattuple'") > 0
    out: dict[str, Any] = {"index": GIN, "options_before": original, "gin_pending_list_limit_kb": args.gin_pending_kb,
                           "appends_per_run": args.gin_appends, "callers": args.callers}

    def variant(setting: str) -> Any:
        async def run() -> dict[str, Any]:
            await owner.execute(f"ALTER INDEX {GIN} SET (fastupdate = {setting})")
            await owner.execute("SELECT gin_clean_pending_list($1::regclass)", GIN)
            batch = events.make(args.gin_appends)
            seen: list[int] = []

            async def appends() -> tuple[list[float], float]:
                stop = asyncio.Event()
                watcher = asyncio.ensure_future(watch_pending(url, stop)) if stattuple else None
                try:
                    return await drive(args.callers, batch, journal.append_event)
                finally:
                    stop.set()
                    if watcher is not None:
                        seen.extend(await watcher)

            result = await wal.measure(appends)
            if seen:
                result["pending_list_flushes_seen"], result["pending_pages_max"] = seen
            flushed = f"; pending list flushes seen {seen[0]} (peak {seen[1]} pages)" if seen else ""
            print(line_for(f"fastupdate = {setting}", result) + flushed, flush=True)
            return result
        return run

    try:
        await owner.execute(f"ALTER INDEX {GIN} SET (gin_pending_list_limit = {int(args.gin_pending_kb)})")
        kept, out["rounds_run_again"] = await alternate([("on", variant("on")), ("off", variant("off"))], args.rounds)
        out["fastupdate_on"], out["fastupdate_off"] = combine(kept["on"]), combine(kept["off"])
        await owner.execute("SELECT gin_clean_pending_list($1::regclass)", GIN)
    finally:
        await owner.execute(f"ALTER INDEX {GIN} RESET (fastupdate, gin_pending_list_limit)")
        if original:
            await owner.execute(f"ALTER INDEX {GIN} SET ({', '.join(original)})")
        out["options_after"] = await owner.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", GIN)
    return out


async def watch_pending(url: str, stop: asyncio.Event) -> tuple[int, int]:
    """Sample the pending list every 100 ms (pgstatginindex reads the metapage); a drop in pending_pages
    is a flush. (flushes, most pending pages seen); a lower bound: two flushes in one 100 ms count once."""
    conn = await asyncpg.connect(url)
    flushes, last, peak = 0, 0, 0
    try:
        while not stop.is_set():
            pages = await conn.fetchval("SELECT pending_pages FROM pgstatginindex($1::regclass)", GIN)
            flushes += pages < last
            last, peak = pages, max(peak, pages)
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    finally:
        await conn.close()
    return flushes, peak


# -- the run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    name = f"es_bench_schema_{os.getpid()}_{secrets.token_hex(3)}"
    url = db_url(args.database_url, name)
    admin = await asyncpg.connect(db_url(args.database_url, urlsplit(args.database_url).path.lstrip("/") or "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    result: dict[str, Any] = {"database": name, "eventstore": str(Path(eventstore.__file__).parent)}
    try:
        result["migrations_applied"] = await asyncio.to_thread(upgrade_schema, url)
        print(f"database {name}; migrations applied: {', '.join(result['migrations_applied'])}")
        owner = await asyncpg.connect(url)
        try:
            result |= await steps(args, url, name, owner)
        finally:
            await owner.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    result["elapsed_seconds"] = time.perf_counter() - began
    result["loadavg_1_5_15_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwhole run: {result['elapsed_seconds']:.0f} s (database {name} created and dropped)")
    return result


async def steps(args: argparse.Namespace, url: str, name: str, owner: asyncpg.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {"server": await server_facts(owner)}
    walinspect = await try_extension(owner, "pg_walinspect")
    await try_extension(owner, "pgstattuple")

    print(f"\n1. load {args.rows:,} rows, {args.entities:,} entities, as the owner (INSERT ... SELECT, chunks of {CHUNK:,})")
    out["load"] = ld = await load(owner, args.rows, args.entities, 0.42)
    print(f"  {ld['rows']:,} rows in {ld['insert_seconds']:.1f} s = {ld['rows_per_s']:,.0f} rows/s "
          f"({ld['with_vacuum_analyze_seconds']:.1f} s with VACUUM ANALYZE); {ld['entities']:,} entities, median "
          f"{ld['median_events_per_entity']} events each, longest {ld['max_entity_version']:,}; {ld['event_types']} types, "
          f"{RARE} {ld['rare_type_share']:.2%}; payload {ld['payload_text_bytes_avg']:.0f} B as text, "
          f"{ld['payload_jsonb_bytes_avg']:.0f} B as jsonb; row {ld['row_bytes_avg']:.0f} B")

    out["sizes"] = await sizes(owner, "credit_events")
    print_sizes("2. credit_events and its indexes after the load and VACUUM ANALYZE", out["sizes"])

    async with PostgresEventJournal(url) as journal:
        out["explain_rare_type"] = ex = await explain_rare(url, journal)
        print(f"\n7. EXPLAIN (ANALYZE, BUFFERS): first page of query_events(event_type={RARE!r}, limit=1000), "
              f"{ld['rows']:,} rows: the statement the journal sent ({ex.get('query')}), values {ex.get('params')}")
        for i, r in enumerate(ex.get("explain", []), 1):
            print(f"  run {i}: execution {r['execution_ms']:.2f} ms, planning {r['planning_ms']:.2f} ms, "
                  f"{r['rows']} rows; buffers shared hit {r['shared_hit_blocks']}, read {r['shared_read_blocks']}")
        if "skipped" in ex:
            print(f"  skipped: {ex['skipped']}")
        else:
            print("    " + "\n    ".join(ex["explain"][-1]["nodes"]))
            print(f"  the same page through PostgresEventJournal.query_events (fence + decode): "
                  f"p50 {ex['journal_first_page_ms_p50']:.2f} ms over 5 calls, {ex['journal_rows']} rows")

        print("\n   building raw_events: a copy of the loaded rows with only the primary key, "
              "(idempotency_key) and (entity_id, entity_version) unique", flush=True)
        t0 = time.perf_counter()
        await raw_copy(owner)
        print(f"   ({time.perf_counter() - t0:.0f} s)")
        out["raw_events_sizes"] = rs = await sizes(owner, "raw_events")
        print(f"   raw_events: heap {mb(rs['heap_bytes'])}, its {len(rs['indexes'])} indexes {mb(rs['indexes_bytes'])}")

        wal = Wal(owner, name, walinspect)
        events = Events(args.entities, seed=7)
        print(f"\n3./4. WAL per append, {args.wal_appends:,} appends from {args.callers} concurrent callers, "
              "CHECKPOINT right before each run (first touches of pages after it write full-page images)", flush=True)
        lib, raw, again = await wal_runs(owner, url, wal, journal, events, args)
        print(combined_line("PostgresEventJournal.append_event", lib))
        print(combined_line("raw prepared INSERT", raw))
        ratios = {"appends_per_s_best": lib["appends_per_s_best"] / raw["appends_per_s_best"],
                  "wal_per_append": lib["wal_bytes_per_append"] / raw["wal_bytes_per_append"]}
        if "this_db_record_bytes_per_append" in lib:
            ratios["wal_records_per_append_this_db"] = (lib["this_db_record_bytes_per_append"]
                                                        / raw["this_db_record_bytes_per_append"])
            ratios["wal_without_fpi_per_append_this_db"] = (lib["this_db_without_fpi_bytes_per_append"]
                                                            / raw["this_db_without_fpi_bytes_per_append"])
        print(f"  library/raw: appends/s {ratios['appends_per_s_best']:.2f}x (best rounds); WAL per append "
              f"{ratios['wal_per_append']:.2f}x (cluster-wide)"
              + (f", {ratios['wal_records_per_append_this_db']:.2f}x (this database's records), "
                 f"{ratios['wal_without_fpi_per_append_this_db']:.2f}x (without full-page images)"
                 if "wal_records_per_append_this_db" in ratios else ""))
        stored = [r["stored"] for r in lib["rounds"] + raw["rounds"]]
        print(f"  stored per run: {', '.join(f'{x:,}' for x in stored)} (of {args.wal_appends:,} each); "
              f"rounds run again after an outside checkpoint: {again}")
        out["wal"] = {"appends_per_run": args.wal_appends, "callers": args.callers, "rounds": args.rounds,
                      "checkpoint_before_each_run": True, "rounds_run_again": again,
                      "library": lib, "raw": raw, "library_over_raw": ratios}

        print(f"\n5. {GIN}: fastupdate on vs off, {args.gin_appends:,} appends per run from {args.callers} callers, "
              f"{args.rounds} rounds alternated, "
              f"gin_pending_list_limit = {args.gin_pending_kb} kB on the index (server default "
              f"{out['server']['gin_pending_list_limit']}), pending list cleaned and CHECKPOINT before each", flush=True)
        out["gin"] = gin = await gin_runs(owner, url, wal, journal, events, args)
        if "skipped" in gin:
            print(f"  skipped: {gin['skipped']}")
        else:
            on, off = gin["fastupdate_on"], gin["fastupdate_off"]
            print(combined_line("fastupdate = on ", on))
            print(combined_line("fastupdate = off", off))
            print(f"  on/off: appends/s {on['appends_per_s_best'] / off['appends_per_s_best']:.2f}x (best rounds), "
                  f"p50 {on['p50_ms'] / off['p50_ms']:.2f}x, p99 {on['p99_ms'] / off['p99_ms']:.2f}x, "
                  f"max {on['max_ms'] / off['max_ms']:.2f}x; rounds run again: {gin['rounds_run_again']}")
            flushes = ", ".join(str(r.get("pending_list_flushes_seen", "?")) for r in on["rounds"])
            print(f"  pending list flushes seen in each fastupdate = on run: {flushes}")
            print(f"  index options restored: {gin['options_after']} (before: {gin['options_before']})")

        out["hot_entity"] = hot = await hot_runs(journal, events, args)
        print(f"\n6. hot entity: {hot['appends_per_run']:,} appends per run from {args.hot_callers} concurrent callers, "
              f"no expected_version, {args.rounds} rounds alternated")
        print(combined_line(f"all to ONE entity ({hot['hot_entity']})", hot["one_entity"]))
        print(combined_line(f"each caller its own entity ({args.hot_callers} entities)", hot["distinct_entities"]))
        print(f"  one/distinct: {hot['one_over_distinct']:.2f}x appends/s (best rounds)")
    return out


async def wal_runs(owner: asyncpg.Connection, url: str, wal: Wal, journal: PostgresEventJournal, events: Events,
                   args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Rounds of: the journal's run, then the raw run of exactly the rows it stored."""
    warm_from = await owner.fetchval("SELECT max(id) FROM credit_events")
    await drive(args.callers, events.make(25 * args.callers), journal.append_event)  # warm-up: lane, statements
    conns = await raw_connections(url, args.callers)
    select = f"SELECT {COLUMNS} FROM credit_events WHERE id > $1 AND id <= $2 ORDER BY id"
    state: dict[str, Any] = {}

    async def library() -> dict[str, Any]:
        state["start"] = await owner.fetchval("SELECT max(id) FROM credit_events")
        batch = events.make(args.wal_appends)
        result = await wal.measure(lambda: drive(args.callers, batch, journal.append_event))
        result["stored"] = await owner.fetchval("SELECT count(*) FROM credit_events WHERE id > $1", state["start"])
        print(line_for("PostgresEventJournal.append_event", result), flush=True)
        return result

    async def raw() -> dict[str, Any]:
        rows = await conns[0].fetch(select, state["start"], 2**62)
        before = await owner.fetchval("SELECT count(*) FROM raw_events")
        result = await wal.measure(lambda: raw_drive(stmts, rows))
        result["stored"] = await owner.fetchval("SELECT count(*) FROM raw_events") - before
        print(line_for(f"raw prepared INSERT into raw_events ({args.callers} asyncpg connections, the same rows)",
                       result), flush=True)
        return result

    try:
        start = await owner.fetchval("SELECT max(id) FROM credit_events")
        stmts = [await c.prepare(RAW_INSERT) for c in conns]
        await raw_drive(stmts, await conns[0].fetch(select, warm_from, start))  # the same warm-up rows
        kept, again = await alternate([("library", library), ("raw", raw)], args.rounds)
    finally:
        for c in conns:
            await c.close()
    return combine(kept["library"]), combine(kept["raw"]), again


async def hot_runs(journal: PostgresEventJournal, events: Events, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of: ``hot_callers`` callers appending to ONE entity, then each caller to its own entity."""
    hot_entity = f"agent-{args.entities // 2:06d}"
    distinct = [f"agent-{args.entities // 2 + 1 + k:06d}" for k in range(args.hot_callers)]
    per = args.hot_appends // args.hot_callers
    one: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        batch = events.make(per * args.hot_callers, entity=hot_entity)
        one.append(summary(*await drive(args.hot_callers, batch, journal.append_event)))
        # round-robin split: caller k gets every hot_callers-th event, all of them for entity distinct[k]
        batch = [e for _ in range(per) for e in (events.make(1, entity=d)[0] for d in distinct)]
        many.append(summary(*await drive(args.hot_callers, batch, journal.append_event)))
    out = {"hot_entity": hot_entity, "distinct": distinct, "callers": args.hot_callers,
           "appends_per_run": per * args.hot_callers, "one_entity": combine(one), "distinct_entities": combine(many)}
    out["one_over_distinct"] = out["one_entity"]["appends_per_s_best"] / out["distinct_entities"]["appends_per_s_best"]
    return out


async def try_extension(conn: asyncpg.Connection, ext: str) -> bool:
    try:
        await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {ext}")
        return True
    except asyncpg.PostgresError as exc:
        print(f"  ({ext} not available: {exc}; its part is left out)")
        return False


async def server_facts(conn: asyncpg.Connection) -> dict[str, Any]:
    facts: dict[str, Any] = {"version": await conn.fetchval("SELECT version()"), "cores": os.cpu_count(),
                             "loadavg_1_5_15_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    for setting in ("shared_buffers", "synchronous_commit", "wal_sync_method", "full_page_writes", "wal_compression",
                    "wal_level", "max_wal_size", "checkpoint_timeout", "gin_pending_list_limit", "commit_delay"):
        facts[setting] = await conn.fetchval(f"SHOW {setting}")
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows loaded (default 1,000,000; --quick 20,000)")
    parser.add_argument("--entities", type=int, help="distinct entity ids (default min(100,000, rows/10))")
    parser.add_argument("--quick", action="store_true", help="small counts: checks that every step runs")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL") or "postgresql://{}@{}:{}/postgres".format(
        os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")),
        help="a database on the server to use (it only serves to create and drop the bench database)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers for steps 3-5")
    parser.add_argument("--wal-appends", type=int, help="appends per WAL run (default 20,000; --quick 500)")
    parser.add_argument("--gin-appends", type=int, help="appends per fastupdate run (default 30,000; --quick 1,000)")
    parser.add_argument("--gin-pending-kb", type=int, help="gin_pending_list_limit set on the index, kB (512; --quick 64)")
    parser.add_argument("--hot-appends", type=int, help="appends per hot-entity run (default 4,000; --quick 400)")
    parser.add_argument("--hot-callers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of steps 3-6, their variants alternated")
    args = parser.parse_args()
    q = args.quick
    args.rows = args.rows or (20_000 if q else 1_000_000)
    args.entities = args.entities or max(1, min(100_000, args.rows // 10))
    args.wal_appends = args.wal_appends or (500 if q else 20_000)
    args.gin_appends = args.gin_appends or (1_000 if q else 30_000)
    args.gin_pending_kb = args.gin_pending_kb or (64 if q else 512)
    args.hot_appends = args.hot_appends or (400 if q else 4_000)
    result = asyncio.run(run(args))
    result["params"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
