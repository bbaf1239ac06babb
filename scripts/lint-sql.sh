#!/usr/bin/env bash
# The SQL linters of `make lint`, over whatever migrations/*.sql exist:
#   1. squawk (.squawk.toml) on every migration and rollback file;
#   2. plpgsql_check on every plpgsql function of a throwaway database that the project's own
#      code (eventstore.postgres.schema.upgrade_schema) has migrated; the database is dropped on exit.
# Exits non-zero when squawk reports anything or plpgsql_check reports an error; plpgsql_check
# warnings are printed only. `make sql-lint-tools` installs both tools. The server is
# $PGHOST:$PGPORT as $PGUSER (default 127.0.0.1:5432, postgres), like make test.
set -euo pipefail
cd "$(dirname "$0")/.."

SQUAWK=${SQUAWK:-.tools/node_modules/.bin/squawk}
PYTHON=${PYTHON:-.venv/bin/python}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
SCHEMA=public  # where upgrade_schema puts the objects when the URL names no schema

for tool in "$SQUAWK" "$PYTHON"; do
  if [ ! -x "$tool" ]; then
    echo "lint-sql: $tool not found: run make sql-lint-tools and make venv (or make lint)" >&2
    exit 2
  fi
done
failed=0

# --- squawk ---------------------------------------------------------------------------------
# yoyo's own parser says which files run outside a transaction: a rollback runs as its
# migration's `-- transactional:` directive says (yoyo reads no directive from a rollback file).
# Those get --no-assume-in-transaction (CREATE INDEX CONCURRENTLY is right there), the rest
# .squawk.toml's assume_in_transaction = true.
classified=$("$PYTHON" - <<'PY'
import glob
from yoyo.migrations import read_sql_migration

for path in sorted(glob.glob("migrations/*.sql")):
    forward = path[: -len(".rollback.sql")] + ".sql" if path.endswith(".rollback.sql") else path
    directives, _, _ = read_sql_migration(forward)
    transactional = {"true": True, "false": False}[directives.get("transactional", "true").lower()]
    print("tx" if transactional else "notx", path)
PY
)
in_tx=() no_tx=()
while read -r kind path; do
  if [ -z "$kind" ]; then continue; fi
  if [ "$kind" = tx ]; then in_tx+=("$path"); else no_tx+=("$path"); fi
done <<<"$classified"

esc=$(printf '\033')
run_squawk() {  # colours and hyperlinks only on a terminal (squawk always emits them)
  if [ -t 1 ]; then
    "$SQUAWK" --config .squawk.toml "$@"
  else
    "$SQUAWK" --config .squawk.toml "$@" | sed -e "s/${esc}\[[0-9;]*m//g" -e "s/${esc}]8;;[^${esc}]*${esc}\\\\//g"
    return "${PIPESTATUS[0]}"
  fi
}
echo "squawk $("$SQUAWK" --version | cut -d' ' -f2): ${#in_tx[@]} files in a transaction, ${#no_tx[@]} outside one"
if [ ${#in_tx[@]} -gt 0 ]; then run_squawk --assume-in-transaction "${in_tx[@]}" || failed=1; fi
if [ ${#no_tx[@]} -gt 0 ]; then run_squawk --no-assume-in-transaction "${no_tx[@]}" || failed=1; fi

# --- plpgsql_check --------------------------------------------------------------------------
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
db="eventstore_lint_$$_$(date +%s)"
# shellcheck disable=SC2317  # run by the EXIT trap
drop_db() {
  psql_ -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" 2>/dev/null \
    || echo "lint-sql: could not drop database $db" >&2
}
trap drop_db EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
psql_ -d postgres -c "CREATE DATABASE \"$db\""
applied=$("$PYTHON" -c 'import sys
from eventstore.errors import EventStoreError
from eventstore.postgres.schema import upgrade_schema
try:
    print(" ".join(upgrade_schema(sys.argv[1], sys.argv[2])))
except EventStoreError as exc:
    sys.exit(f"lint-sql: {exc}")' "postgresql://$PGUSER@$PGHOST:$PGPORT/$db" "$SCHEMA")
echo "plpgsql_check: database $db migrated ($applied)"

# Every plpgsql function of the schema; a trigger function once per table it is a trigger on
# (plpgsql_check needs the relation to know NEW and OLD); one on no table cannot be checked and
# is reported as a warning. The options, class by class:
#   fatal_errors => false          report every error, not just the first one
#   other_warnings, extra_warnings on: unused variables/parameters, dead code, missing RETURN...
#     Accepted and printed: "control reached end of function without RETURN" on
#     credit_events_fence_wait (0007, 0008), whose LOOP only ends by RETURN: plpgsql_check cannot
#     see that (gone once the loop ends with EXIT WHEN ... and RETURN false follows END LOOP).
#   performance_warnings => false  accepted as a class: credit_events_fence_mark (0002) "should
#     be STABLE" (it must stay VOLATILE: it assigns a fresh xid, pg_current_xact_id is catalogued
#     STABLE) and fence_wait's implicit casts in DECLARE initialisations, once per call
#     (regclass -> oid; 0008's numeric -> double precision).
#   security_warnings, compatibility_warnings on (EXECUTE injection, old-version constructs).
# A function can still tune these for itself: plpgsql_check reads `@plpgsql_check_options:`
# comments in its body (use_incomment_options, on by default).
psql_ -d "$db" -v schema="$SCHEMA" <<'SQL'
CREATE SCHEMA plpgsql_check_lint;
CREATE EXTENSION plpgsql_check SCHEMA plpgsql_check_lint;
SET search_path = :"schema";
CREATE TABLE plpgsql_check_lint.targets AS
SELECT p.oid AS fn, t.tgrelid AS rel, p.prorettype = 'trigger'::regtype AS is_trigger
  FROM pg_proc AS p
  JOIN pg_language AS l ON l.oid = p.prolang
  LEFT JOIN (SELECT DISTINCT tgfoid, tgrelid FROM pg_trigger) AS t ON t.tgfoid = p.oid
 WHERE l.lanname = 'plpgsql'
   AND p.pronamespace = :'schema'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d  -- functions of extensions are not ours
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');
CREATE TABLE plpgsql_check_lint.findings AS
SELECT t.fn::regprocedure::text AS function, t.rel::regclass::text AS relation, c.lineno, c.statement,
       c.message, c.detail, c.hint, c.level, c.query, c.context
  FROM plpgsql_check_lint.targets AS t
 CROSS JOIN LATERAL plpgsql_check_lint.plpgsql_check_function_tb(
           t.fn, coalesce(t.rel, 0),
           fatal_errors => false,
           other_warnings => true,
           extra_warnings => true,
           performance_warnings => false,
           security_warnings => true,
           compatibility_warnings => true) AS c
 WHERE NOT (t.is_trigger AND t.rel IS NULL)
UNION ALL
SELECT t.fn::regprocedure::text, NULL, NULL, NULL, 'trigger function on no table: not checked',
       NULL, 'plpgsql_check needs the relation of a trigger', 'warning', NULL, NULL
  FROM plpgsql_check_lint.targets AS t
 WHERE t.is_trigger AND t.rel IS NULL;
SQL
psql_ -d "$db" -At <<'SQL'
SELECT format('%s: %s%s%s%s: %s', f.level, f.function, ' on ' || f.relation, ' line ' || f.lineno,
              ' (' || f.statement || ')', f.message)
       || coalesce(E'\n    detail: ' || f.detail, '') || coalesce(E'\n    hint: ' || f.hint, '')
       || coalesce(E'\n    query: ' || f.query, '') || coalesce(E'\n    context: ' || f.context, '')
  FROM plpgsql_check_lint.findings AS f
 ORDER BY f.level <> 'error', f.function, f.lineno;
SELECT format('plpgsql_check %s: %s functions checked, %s errors, %s warnings',
              (SELECT extversion FROM pg_extension WHERE extname = 'plpgsql_check'),
              (SELECT count(*) FROM plpgsql_check_lint.targets WHERE NOT (is_trigger AND rel IS NULL)),
              count(*) FILTER (WHERE level = 'error'), count(*) FILTER (WHERE level <> 'error'))
  FROM plpgsql_check_lint.findings;
SQL
errors=$(psql_ -d "$db" -At -c "SELECT count(*) FROM plpgsql_check_lint.findings WHERE level = 'error'")
if [ "$errors" != 0 ]; then failed=1; fi

exit "$failed"
