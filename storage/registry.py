"""Choose a storage backend by URL scheme (``lmdb:///path``, ``memory://``, plug-ins).

A backend is a class with an async-context-manager constructor::

    @classmethod
    def from_url(cls, url: str) -> AbstractAsyncContextManager[Self]: ...

that opens the store described by ``url`` on entry and closes it on exit.

Lookup order for a scheme, first hit wins:

1. :func:`register_backend` calls (a class, or a lazy ``"module:Class"`` path);
2. the built-ins, imported only when used: ``lmdb`` -> ``storage.lmdb:LmdbStorage``,
   ``memory`` -> ``storage.memory:MemoryStorage`` (a plug-in cannot hijack them);
3. entry points in group ``wa_relay.storage`` whose name is the scheme.

The registry is a :class:`BackendRegistry` object; the module keeps one default
instance (like keyring's and fsspec's), which :func:`open_storage` and
:func:`register_backend` use unless given another one.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from .base import Storage
from .errors import UnknownBackend

ENTRY_POINT_GROUP = "wa_relay.storage"

BUILTIN_BACKENDS: dict[str, str] = {
    "lmdb": "storage.lmdb:LmdbStorage",
    "memory": "storage.memory:MemoryStorage",
}


def _load_dotted(path: str) -> type:
    """Import ``"pkg.mod:Class"`` (or ``"pkg.mod.Class"``) and return the class."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise UnknownBackend(f"malformed backend path {path!r}")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise UnknownBackend(f"backend {path!r} is not a class")
    return obj


class BackendRegistry:
    """Maps URL schemes to backend classes. Not thread-safe; use from the Trio thread."""

    def __init__(self, *, use_entry_points: bool = True) -> None:
        self._explicit: dict[str, type | str] = {}
        self._use_entry_points = use_entry_points

    def register(self, scheme: str, backend: type | str) -> None:
        """Register ``backend`` (a class or ``"module:Class"`` path) for ``scheme``.

        Overrides built-ins and entry points for that scheme. The dotted path is
        imported only when a URL with that scheme is opened.
        """
        scheme = scheme.lower()
        if not scheme or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"malformed URL scheme {scheme!r}")
        if not isinstance(backend, type | str):
            raise TypeError("backend must be a class or a 'module:Class' string")
        self._explicit[scheme] = backend

    def resolve(self, scheme: str) -> type:
        """The backend class for ``scheme``. Raises UnknownBackend if none is known."""
        scheme = scheme.lower()
        target: type | str | None = self._explicit.get(scheme) or BUILTIN_BACKENDS.get(scheme)
        if target is None and self._use_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name.lower() == scheme:
                    target = ep.value
                    break
        if target is None:
            raise UnknownBackend(
                f"no storage backend for URL scheme {scheme!r} "
                f"(built-in: {', '.join(sorted(BUILTIN_BACKENDS))}; "
                f"plug-ins register entry points in group {ENTRY_POINT_GROUP!r})"
            )
        if isinstance(target, str):
            try:
                target = _load_dotted(target)
            except (ImportError, AttributeError) as exc:
                raise UnknownBackend(f"cannot load backend for {scheme!r}: {exc}") from exc
        if not callable(getattr(target, "from_url", None)):
            raise UnknownBackend(f"backend {target.__qualname__} has no from_url() constructor")
        return target

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Storage]:
        """See :func:`open_storage`."""
        scheme = urlsplit(url).scheme
        if not scheme:
            raise UnknownBackend(f"storage URL has no scheme: {url!r} (try 'lmdb:///path')")
        backend = self.resolve(scheme)
        async with backend.from_url(url) as storage:  # type: ignore[attr-defined]
            yield storage


_default_registry = BackendRegistry()


def default_registry() -> BackendRegistry:
    """The process-wide registry used by :func:`open_storage` and :func:`register_backend`."""
    return _default_registry


def register_backend(scheme: str, backend: type | str) -> None:
    """Register ``backend`` (class or lazy ``"module:Class"`` path) for URLs ``scheme://...``.

    Raises:
        ValueError: malformed scheme. TypeError: ``backend`` is neither a class nor a str.
    """
    _default_registry.register(scheme, backend)


def open_storage(
    url: str, *, registry: BackendRegistry | None = None
) -> AbstractAsyncContextManager[Storage]:
    """Open the storage at ``url``; an async context manager yielding a :class:`Storage`.

    ``async with open_storage("lmdb:///var/lib/wa-relay/node1") as st: ...``

    Schemes: ``lmdb:///abs/path`` (or ``lmdb://rel/path``, relative to the working
    directory; query ``?map_size=BYTES``), ``memory://`` (query
    ``?capacity_bytes=N``), or any registered plug-in. The store is flushed and
    closed when the block exits.

    Raises (on entry):
        UnknownBackend: no backend for the scheme, or it cannot be imported.
        ValueError: the backend rejects the URL.
        StorageError: the backend cannot open the store.
    """
    return (registry or _default_registry).open(url)
