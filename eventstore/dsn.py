"""Database URLs: accept the spellings users have, hand each driver the one it wants,
and describe a server without ever repeating its password."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

from .errors import ConfigurationError

ACCEPTED_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "postgresql+psycopg://")


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed PostgreSQL URL. ``str()`` and ``repr()`` never show the password."""

    parts: SplitResult
    schema: str | None

    @property
    def host(self) -> str:
        return self.parts.hostname or "localhost"

    @property
    def port(self) -> int:
        return self.parts.port or 5432

    @property
    def database(self) -> str:
        return unquote(self.parts.path.lstrip("/")) or (self.parts.username or "postgres")

    @property
    def password(self) -> str | None:
        return unquote(self.parts.password) if self.parts.password else None

    @property
    def where(self) -> str:
        """``host:port/database`` for messages."""
        return f"{self.host}:{self.port}/{self.database}"

    def _with_scheme(self, scheme: str, extra_query: dict[str, str] | None = None) -> str:
        query = dict(parse_qsl(self.parts.query))
        query.pop("schema", None)
        if extra_query:
            query.update(extra_query)
        return self.parts._replace(scheme=scheme, query=urlencode(query)).geturl()

    def asyncpg_dsn(self) -> str:
        return self._with_scheme("postgresql")

    def yoyo_url(self, schema: str) -> str:
        # psycopg 3 (pulled in by pytest-postgresql anyway) instead of yoyo's psycopg2 default.
        return self._with_scheme("postgresql+psycopg", {"schema": schema})

    def psycopg_dsn(self) -> str:
        return self._with_scheme("postgresql")

    def scrub(self, text: str) -> str:
        """``text`` with the password (raw and URL-quoted) removed."""
        for secret in {self.password, self.parts.password}:
            if secret:
                text = text.replace(secret, "***")
        return text

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
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        # The message of urllib's error can quote the URL: never echo it.
        raise ConfigurationError(f"malformed database URL: {type(exc).__name__} while parsing host/port") from None
    query = dict(parse_qsl(parts.query))
    return DatabaseURL(parts=parts, schema=query.get("schema"))
