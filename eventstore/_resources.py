"""Where the shipped ``sql/`` and ``migrations/`` folders are.

In a wheel they are force-included as ``eventstore/_sql`` and ``eventstore/_migrations``; in a
checkout (editable install, tests) they are the repository's top-level folders.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _resolve(packaged: str, top_level: str) -> Path:
    inside = Path(str(files("eventstore").joinpath(packaged)))
    if inside.is_dir():
        return inside
    checkout = Path(__file__).resolve().parent.parent / top_level
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"eventstore is installed without its {top_level}/ folder (looked in {inside} and {checkout})")


def sql_dir() -> Path:
    return _resolve("_sql", "sql")


def migrations_dir() -> Path:
    return _resolve("_migrations", "migrations")


def shipped_migration_ids() -> list[str]:
    """Migration ids (file names without ``.sql``) in apply order; never empty."""
    ids = sorted(p.name[:-4] for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))
    if not ids:
        raise FileNotFoundError(f"no migrations found in {migrations_dir()}")
    return ids
