"""``postgresql://`` URLs: what goes to libpq and what is ours."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "wa_relay"
_OPTIONS = {"schema", "pool_min", "pool_max", "max_bytes", "migrate", "retry_for",
            "connect_timeout_s", "notify"}


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``postgresql://...?schema=x&host=/run/pg`` -> ``(libpq conninfo URL, our options)``.

    Our options (see :meth:`PostgresStorage.from_url`) are taken out; every other
    query parameter, the hosts (several for failover) and the database name go to
    libpq unchanged. Raises ValueError for another scheme or a repeated option.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    ours: dict[str, str] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            if key in ours:
                raise ValueError(f"option {key!r} given twice in {url!r}")
            ours[key] = value
        else:
            rest.append((key, value))
    query = urlencode(rest)
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return conninfo, ours


def _flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def open_kwargs(opts: dict[str, str]) -> dict[str, Any]:
    """Our URL options (from :func:`split_url`) as keyword arguments of
    :meth:`PostgresStorage.open`. Raises ValueError for a malformed value."""
    kwargs: dict[str, Any] = {}
    if "schema" in opts:
        kwargs["schema"] = opts["schema"]
    for name in ("pool_min", "pool_max"):
        if name in opts:
            kwargs[name] = int(opts[name])
    if "max_bytes" in opts:
        from ..lmdb import parse_size
        kwargs["max_bytes"] = parse_size(opts["max_bytes"])
    for name in ("migrate", "notify"):
        if name in opts:
            kwargs[name] = _flag(opts[name])
    if "retry_for" in opts:
        kwargs["retry_for"] = float(opts["retry_for"])
    if "connect_timeout_s" in opts:
        kwargs["connect_timeout"] = float(opts["connect_timeout_s"])
    return kwargs
