#!/usr/bin/env bash
# Make sure a PostgreSQL server answers at $PGHOST:$PGPORT, starting the local cluster if needed.
set -euo pipefail
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}

ready() { pg_isready -q -h "$host" -p "$port" -U "$user" 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "make test needs PostgreSQL (15 or newer) and its client tools; none found." >&2
  echo "Install it (Debian: apt-get install postgresql), or point PGHOST/PGPORT/PGUSER at a server that accepts trust or .pgpass logins." >&2
  exit 1
fi
ready && exit 0
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "PostgreSQL is not answering at $host:$port; starting the local cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
fi
echo "No PostgreSQL answers at $host:$port." >&2
echo "Start one (pg_ctlcluster --skip-systemctl-redirect 15 main start), or set PGHOST/PGPORT/PGUSER to a server you can use." >&2
exit 1
