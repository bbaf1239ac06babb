"""The ``eventstore`` command line. Exit status: 0 ok, 1 a check or operation failed, 2 bad usage.
Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigurationError, EventStoreError, InvalidEventError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad flags or missing configuration: exit 2."""


def _database_url(args: argparse.Namespace) -> str:
    url = getattr(args, "database_url", None) or os.environ.get("DATABASE_URL")
    if not url:
        raise UsageError("this command needs a database: pass --database-url URL or set DATABASE_URL")
    return url


def _add_database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--schema", default=None, help="PostgreSQL schema (default: public)")


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["file", "postgres"], default=None,
                        help="journal backend (default: postgres when --database-url is given, "
                             "else $EVENT_JOURNAL_BACKEND, then file)")
    parser.add_argument("--path", default=None, help="file journal path (default: $EVENT_JOURNAL_PATH)")
    _add_database_flags(parser)


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=str, sort_keys=True))


# -- schema --------------------------------------------------------------------------------


def cmd_schema_upgrade(args: argparse.Namespace) -> int:
    from .postgres.schema import upgrade_schema

    applied = upgrade_schema(_database_url(args), args.schema, role_prefix=args.role_prefix)
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ' (already current)'}")
    return EXIT_OK


def cmd_schema_status(args: argparse.Namespace) -> int:
    from .postgres.schema import schema_status

    states = schema_status(_database_url(args), args.schema)
    for state in states:
        print(f"{'applied' if state.applied else 'pending'}  {state.migration_id}")
    return EXIT_OK if all(s.applied for s in states) else EXIT_FAILED


def cmd_schema_downgrade(args: argparse.Namespace) -> int:
    from .postgres.schema import downgrade_schema

    if not args.yes:
        raise UsageError("schema downgrade drops credit_events and destroys the event history; rerun with --yes")
    rolled = downgrade_schema(_database_url(args), args.schema)
    print(f"rolled back {len(rolled)} migration(s){': ' + ', '.join(rolled) if rolled else ''}")
    return EXIT_OK


# -- journal commands ------------------------------------------------------------------------


async def _open_journal(args: argparse.Namespace, *, reading: bool):  # type: ignore[no-untyped-def]
    """The journal a command works on, resolved as ``create_event_journal`` resolves it. A command
    that only reads opens a file journal read-only: it never takes the writer's lock."""
    from .factory import create_event_journal, resolve_backend

    if resolve_backend(args.backend, args.database_url) == "postgres":
        options = {"schema": args.schema} if args.schema else {}
        return await create_event_journal("postgres", database_url=_database_url(args), pool_size=2, max_overflow=2, **options)
    return await create_event_journal("file", path=args.path, **({"read_only": True} if reading else {}))


def cmd_stats(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        journal = await _open_journal(args, reading=True)
        try:
            await journal.last_position()  # a read-only file journal counts its events as it indexes them: all of them
            return journal.get_metrics()
        finally:
            await journal.close()

    metrics = asyncio.run(run())
    if args.json:
        _print_json(metrics)
    else:
        width = max(len(k) for k in metrics)
        for key in sorted(metrics):
            print(f"{key:<{width}}  {metrics[key]}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    if args.agents < 2:
        raise UsageError("--agents must be at least 2 (transfers need two agents)")

    async def main() -> bool:
        journal = await _open_journal(args, reading=False)
        try:
            return await run(journal, events=args.events, agent_count=args.agents, workers=args.workers)
        finally:
            await journal.close()

    return EXIT_OK if asyncio.run(main()) else EXIT_FAILED


def cmd_tail(args: argparse.Namespace) -> int:
    from .envelope import ENCODER

    if args.after < 0:
        raise UsageError(f"--after must be >= 0, got {args.after}")
    out = sys.stdout.buffer

    async def run() -> None:
        journal = await _open_journal(args, reading=True)
        try:
            async for event in journal.subscribe(after=args.after):
                out.write(ENCODER.encode(event) + b"\n")
                out.flush()
        finally:
            await journal.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`eventstore tail | head`): not an error. Point stdout at devnull
        # so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def _source_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    return path


def _print_examples(label: str, examples: list[str]) -> None:
    for example in examples:
        print(f"  {label}: {example}")


def cmd_import(args: argparse.Namespace) -> int:
    from .postgres.file_import import import_file
    from .progress import ProgressBar

    url = _database_url(args)
    source = _source_file(args.file)
    bar = ProgressBar("import")
    try:
        result = asyncio.run(import_file(source, url, batch_size=args.batch_size, dry_run=args.dry_run,
                                         schema=args.schema, progress=bar.update))
    finally:
        bar.finish()
    if args.json:
        _print_json(result.as_dict())
    else:
        verb = "would insert" if args.dry_run else "inserted"
        print(f"{verb} {result.inserted}, already present {result.already_present}, corrupt {result.corrupt}"
              + (f", repeated lines skipped {result.repeated}" if result.repeated else "")
              + (" (dry run: nothing written)" if args.dry_run else ""))
        for number, reason in result.corrupt_lines:
            print(f"  corrupt line {number}: {reason}")
        if result.corrupt > len(result.corrupt_lines):
            print(f"  ... and {result.corrupt - len(result.corrupt_lines)} more corrupt lines")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .postgres.file_export import export_to_file
    from .progress import ProgressBar

    url = _database_url(args)
    bar = ProgressBar("export")
    try:
        written = asyncio.run(export_to_file(url, args.file, after=args.after, schema=args.schema, progress=bar.update))
    finally:
        bar.finish()
    if args.json:
        _print_json({"exported": written, "file": args.file, "after": args.after})
    else:
        print(f"exported {written} event(s) to {args.file}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .postgres.file_verify import verify_file
    from .progress import ProgressBar

    url = _database_url(args)
    source = _source_file(args.file)
    bar = ProgressBar("verify")
    try:
        result = asyncio.run(verify_file(source, url, schema=args.schema, progress=bar.update))
    finally:
        bar.finish()
    if args.json:
        _print_json(result.as_dict())
    else:
        state = "OK" if result.ok else "MISMATCH"
        print(f"{state}: {result.events} file events, {result.matched} identical, {result.missing} missing, "
              f"{result.different} different, {result.extra_in_database} extra in database, {result.corrupt} corrupt lines"
              + (f"; {result.checkpoints} checkpoint(s), {result.checkpoints_behind} behind" if result.checkpoints else ""))
        for kind in ("missing", "different", "extra_in_database", "corrupt", "checkpoints_behind"):
            _print_examples(kind.replace("_", " "), result.examples[kind])
        if result.checkpoints and result.positions_moved:
            print(f"note: {result.positions_moved} event(s) have another position in PostgreSQL than in the file; a "
                  "checkpoint counting this journal's positions points elsewhere (docs/migration.md)")
    return EXIT_OK if result.ok else EXIT_FAILED


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventstore", description="SQL-first event store: file and PostgreSQL journals.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    schema = commands.add_parser("schema", help="apply, show or roll back the PostgreSQL schema")
    schema_commands = schema.add_subparsers(dest="schema_command", metavar="ACTION")
    schema_commands.required = True
    upgrade = schema_commands.add_parser("upgrade", help="apply pending migrations")
    _add_database_flags(upgrade)
    upgrade.add_argument("--role-prefix", default=None, metavar="PREFIX",
                         help="name this schema's group roles PREFIX_writer and PREFIX_reader "
                              "(default: $EVENTSTORE_ROLE_PREFIX, else eventstore; roles are cluster-wide)")
    upgrade.set_defaults(func=cmd_schema_upgrade)
    status = schema_commands.add_parser("status", help="list migrations; exit 1 if any is pending")
    _add_database_flags(status)
    status.set_defaults(func=cmd_schema_status)
    downgrade = schema_commands.add_parser("downgrade", help="roll back every migration (destroys events)")
    _add_database_flags(downgrade)
    downgrade.add_argument("--yes", action="store_true", help="confirm that the event history is dropped")
    downgrade.set_defaults(func=cmd_schema_downgrade)

    stats = commands.add_parser("stats", help="print the journal's metrics")
    _add_backend_flags(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    stats.set_defaults(func=cmd_stats)

    demo = commands.add_parser("demo", help="run the credit-system demo on the configured backend")
    _add_backend_flags(demo)
    demo.add_argument("--events", type=_positive_int, default=20_000, help="events to write (default 20000)")
    demo.add_argument("--agents", type=_positive_int, default=50, help="agents (default 50)")
    demo.add_argument("--workers", type=_positive_int, default=8, help="concurrent transfer tasks (default 8)")
    demo.set_defaults(func=cmd_demo)

    imp = commands.add_parser("import", help="copy a JSONL journal into PostgreSQL (safe to re-run)")
    imp.add_argument("file", metavar="FILE.jsonl")
    imp.add_argument("--batch-size", type=_positive_int, default=1000, help="events per transaction (default 1000)")
    imp.add_argument("--dry-run", action="store_true", help="validate and count; write nothing")
    imp.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_database_flags(imp)
    imp.set_defaults(func=cmd_import)

    export = commands.add_parser("export", help="write PostgreSQL's events to a JSONL journal")
    export.add_argument("file", metavar="FILE.jsonl")
    export.add_argument("--after", type=_non_negative_int, default=0, help="only positions after POS")
    export.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_database_flags(export)
    export.set_defaults(func=cmd_export)

    verify = commands.add_parser("verify", help="exit 0 only if every event of the file is in PostgreSQL, identical")
    verify.add_argument("file", metavar="FILE.jsonl")
    verify.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_database_flags(verify)
    verify.set_defaults(func=cmd_verify)

    tail = commands.add_parser("tail", help="follow the journal as JSONL: every event after --after, then new ones")
    _add_backend_flags(tail)
    tail.add_argument("--after", type=int, default=0, help="start after this position (default 0: everything)")
    tail.set_defaults(func=cmd_tail)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad flags
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error, and no traceback at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        print(f"eventstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigurationError, InvalidEventError) as exc:
        print(f"eventstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EventStoreError as exc:
        print(f"eventstore: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, FileNotFoundError) as exc:
        print(f"eventstore: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("eventstore: interrupted", file=sys.stderr)
        return 130
