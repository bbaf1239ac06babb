"""The statements of ``sql/*.sql``, loaded once through aiosql. The journal sends their SQL text
itself on connections it holds (positional parameters), so each file's parameters must first
appear in the order they are declared: checked here, at import."""

from __future__ import annotations

import re
from typing import Any

import aiosql

from .. import _resources


def load_queries() -> Any:
    queries = aiosql.from_path(_resources.sql_dir(), "asyncpg")
    for name in queries.available_queries:
        query = getattr(queries, name)
        if not list(query.parameters or ()) or not hasattr(query, "sql"):
            continue
        appearance = list(dict.fromkeys(re.findall(r"\$(\d+)", query.sql)))
        if appearance != [str(i) for i in range(1, len(appearance) + 1)]:
            raise RuntimeError(f"query {name} in {_resources.sql_dir()}: parameters must first appear in declared order")
    return queries


QUERIES = load_queries()
