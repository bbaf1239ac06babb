"""A throwaway PostgreSQL cluster of a test's own: initdb on a free port, so a test may stop,
restart or break it without touching the shared server other tests use.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` OS user
(through ``runuser``); as anyone else it runs as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("initdb not found: install the PostgreSQL server package (Debian: postgresql)")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayCluster:
    """``with ThrowawayCluster() as pg: pg.url()``: a running server, removed on exit."""

    def __init__(
        self, *, auth: str = "trust", superuser_password: str | None = None, settings: str = "", port: int | None = None,
    ) -> None:
        self.bindir = _bindir()
        self.port = port or free_port()
        self.auth = auth
        self.superuser_password = superuser_password
        self.root = Path(tempfile.mkdtemp(prefix="eventstore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = settings  # extra "-c name=value" server options
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        args = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-N", f"--auth={self.auth}"]
        if self.superuser_password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.superuser_password + "\n")
            if self._as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            args.append(f"--pwfile={pwfile}")
        self._run(*args)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c shared_buffers=32MB -c max_connections=60 "
            f"-c wal_sender_timeout=5s -c wal_receiver_status_interval=1s {self.settings}"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def standby(self, name: str = "standby1", *, synchronous: bool = False, port: int | None = None) -> ThrowawayCluster:
        """A streaming hot standby of this cluster (``pg_basebackup -R``), started; removed by its
        own ``cleanup()``. ``synchronous``: this cluster waits for it at every commit."""
        replica = ThrowawayCluster(settings=self.settings, port=port)
        if replica._as_postgres:
            shutil.chown(replica.root, "postgres", "postgres")
        try:
            replica._run(
                str(self.bindir / "pg_basebackup"), "-D", str(replica.data), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-d", f"application_name={name}",
            )
            replica.start()
        except BaseException:
            replica.cleanup()
            raise
        if synchronous:
            self.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'", "SELECT pg_reload_conf()")
        return replica

    def sql(self, *statements: str, dbname: str = "postgres") -> str:
        """Run statements with psql as the superuser; their output, unaligned."""
        args = [str(self.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", dbname]
        for statement in statements:
            args += ["-c", statement]
        return self._run(*args, timeout=60).stdout.strip()

    def promote(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def kill(self) -> None:
        """SIGKILL the postmaster and then its children, as a machine that dies takes them: no
        backend finishes a commit or answers a client afterwards."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _parent(stat) == pid]
        for victim in [pid, *children]:
            try:
                os.kill(victim, 9)
            except ProcessLookupError:
                pass

    def url(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> ThrowawayCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile
