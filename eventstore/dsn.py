"""Database URLs: accept the spellings users have, hand each driver the one it wants,
and describe a server without ever repeating its password."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import ConfigurationError

ACCEPTED_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "postgresql+psycopg://")


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed PostgreSQL URL. ``str()`` and ``repr()`` never show the password."""

    parts: SplitResult
    schema: str | None

    @property
    def hosts(self) -> tuple[tuple[str, int], ...]:
        """Every ``(host, port)`` of the URL, in order: a multi-host URL
        (``postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write``) names several,
        and the driver connects to the first that answers as asked."""
        query = dict(parse_qsl(self.parts.query))
        default_port = query.get("port", "")
        found = []
        for item in self.parts.netloc.rpartition("@")[2].split(","):
            host, port = _split_host(item)
            # A Unix socket comes as ?host=/dir with an empty host part, as libpq and asyncpg read it.
            host = host or query.get("host") or "localhost"
            port = port or default_port
            found.append((host, int(port) if port.isdigit() else 5432))
        return tuple(found)

    @property
    def host(self) -> str:
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    @property
    def database(self) -> str:
        return unquote(self.parts.path.lstrip("/")) or (self.parts.username or "postgres")

    @property
    def password(self) -> str | None:
        return unquote(self.parts.password) if self.parts.password else None

    @property
    def where(self) -> str:
        """``host:port/database`` for messages (``h1:p1,h2:p2/database`` for several hosts)."""
        return ",".join(f"{host}:{port}" for host, port in self.hosts) + f"/{self.database}"

    @property
    def connect_timeout(self) -> float | None:
        """libpq's ``?connect_timeout=`` (seconds), which asyncpg would send as a server setting."""
        value = dict(parse_qsl(self.parts.query)).get("connect_timeout")
        try:
            return float(value) if value else None
        except ValueError:
            raise ConfigurationError(f"connect_timeout must be a number of seconds (got {value!r})") from None

    def _with_scheme(self, scheme: str, extra_query: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> str:
        query = dict(parse_qsl(self.parts.query))
        for name in ("schema", *drop):
            query.pop(name, None)
        if extra_query:
            query.update(extra_query)
        # User and password re-quoted, so every driver reads them alike (a raw '@' or '%' in a
        # password would otherwise split differently, or quote a fragment of it in libpq's error).
        userinfo, at, hostinfo = self.parts.netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            userinfo = quote(unquote(user), safe="") + (colon and ":" + quote(unquote(password), safe=""))
        netloc = f"{userinfo}{at}{hostinfo}"
        # Built by hand: urlunsplit drops the '//' of an empty host (postgresql:///db?host=/socket).
        # quote, not urlencode's default quote_plus: libpq does not read '+' as a space
        # (?options=-c%20name%3Dvalue would reach the server as "+name").
        encoded = urlencode(query, quote_via=quote)
        return f"{scheme}://{netloc}{self.parts.path}" + (f"?{encoded}" if encoded else "")

    def asyncpg_dsn(self) -> str:
        return self._with_scheme("postgresql", drop=("connect_timeout",))

    def yoyo_url(self, schema: str, settings: dict[str, str] | None = None) -> str:
        """psycopg 3 (pulled in by pytest-postgresql anyway) instead of yoyo's psycopg2 default;
        ``settings`` become session settings (libpq ``options``, after the URL's own)."""
        extra = {"schema": schema}
        if settings:
            own = dict(parse_qsl(self.parts.query)).get("options", "")
            extra["options"] = " ".join([own, *(f"-c {name}={value}" for name, value in settings.items())]).strip()
        return self._with_scheme("postgresql+psycopg", extra)

    def psycopg_dsn(self) -> str:
        return self._with_scheme("postgresql")

    def scrub(self, text: str) -> str:
        """``text`` with the password (raw and URL-quoted) removed."""
        for secret in {self.password, self.parts.password}:
            if secret:
                text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """An error for a message: its first line without the password, or its type's name."""
        text = str(exc).strip()
        return self.scrub(text.splitlines()[0]) if text else type(exc).__name__

    def __str__(self) -> str:
        user = f"{self.parts.username}@" if self.parts.username else ""
        return f"postgresql://{user}{self.where}"

    __repr__ = __str__


def parse_database_url(url: str | None) -> DatabaseURL:
    """Parse ``url``; raise :class:`ConfigurationError` listing what is accepted when it is not."""
    if not url:
        raise ConfigurationError(
            "no database URL: pass --database-url / database_url=, or set DATABASE_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    if not isinstance(url, str) or not url.startswith(ACCEPTED_SCHEMES):
        scheme = url.split("://", 1)[0] if isinstance(url, str) and "://" in url else "no scheme"
        raise ConfigurationError(
            f"unsupported database URL ({scheme}); accepted: {', '.join(ACCEPTED_SCHEMES)}"
        )
    try:
        parts = urlsplit(url)
        for item in parts.netloc.rpartition("@")[2].split(","):
            _, port = _split_host(item)
            if port and not port.isdigit():
                raise ValueError("port")
    except ValueError as exc:
        # The message of urllib's error can quote the URL: never echo it.
        raise ConfigurationError(f"malformed database URL: {type(exc).__name__} while parsing host/port") from None
    query = dict(parse_qsl(parts.query))
    return DatabaseURL(parts=parts, schema=query.get("schema"))


def _split_host(item: str) -> tuple[str, str]:
    """``host[:port]`` or ``[ipv6][:port]`` as (host, port text)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = item.partition(":")
    return unquote(host), port
