"""open_storage / register_backend: scheme lookup, lazy dotted paths, entry points."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import EntryPoint
from typing import Self

import pytest
import trio

import storage.registry as registry_mod
from storage import UnknownBackend, open_storage
from storage.memory import MemoryStorage
from storage.registry import BackendRegistry


class FakeBackend(MemoryStorage):
    """A plug-in: a memory store that remembers the URL it was opened with."""

    opened_urls: list[str] = []

    @classmethod
    @asynccontextmanager
    async def from_url(cls, url: str) -> AsyncIterator[Self]:
        cls.opened_urls.append(url)
        st = cls()
        try:
            yield st
        finally:
            await st.aclose()


async def test_memory_url_opens_fresh_store() -> None:
    with trio.fail_after(5):
        async with open_storage("memory://") as st:
            assert isinstance(st, MemoryStorage)
            assert await st.enqueue([("u", 0, b"x")], now=1.0) == [1]
        async with open_storage("memory://") as st2:
            assert await st2.queue_length("u", 0) == 0
        with pytest.raises(trio.ClosedResourceError):
            await st.queue_length("u", 0)


async def test_memory_capacity_from_query() -> None:
    async with open_storage("memory://?capacity_bytes=1234") as st:
        assert isinstance(st, MemoryStorage) and st.capacity_bytes == 1234
    with pytest.raises(ValueError, match="unknown"):
        async with open_storage("memory://?bogus=1"):
            pass


@pytest.mark.parametrize("url", ["nope:///x", "/just/a/path", "ftp://h/x"])
async def test_unknown_scheme(url: str) -> None:
    with pytest.raises(UnknownBackend):
        async with open_storage(url, registry=BackendRegistry(use_entry_points=False)):
            pass


async def test_register_class_and_dotted_path() -> None:
    reg = BackendRegistry(use_entry_points=False)
    reg.register("Fake", FakeBackend)
    async with open_storage("fake://a/b?x=1", registry=reg) as st:
        assert type(st) is FakeBackend
    assert FakeBackend.opened_urls[-1] == "fake://a/b?x=1"
    reg.register("fake2", f"{__name__}:FakeBackend")
    async with open_storage("fake2://", registry=reg) as st:
        assert type(st) is FakeBackend
    reg.register("memory", f"{__name__}.FakeBackend")  # explicit beats built-in
    async with open_storage("memory://", registry=reg) as st:
        assert type(st) is FakeBackend


async def test_bad_registrations() -> None:
    reg = BackendRegistry(use_entry_points=False)
    with pytest.raises(ValueError):
        reg.register("bad scheme", FakeBackend)
    with pytest.raises(TypeError):
        reg.register("x", 42)  # type: ignore[arg-type]
    reg.register("missing", "no_such_module_xyz:Thing")
    with pytest.raises(UnknownBackend, match="cannot load"):
        reg.resolve("missing")
    reg.register("noctor", "builtins:dict")
    with pytest.raises(UnknownBackend, match="from_url"):
        reg.resolve("noctor")


def test_entry_points_found_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="plug", value=f"{__name__}:FakeBackend", group="wa_relay.storage")
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [ep])
    assert BackendRegistry().resolve("plug") is FakeBackend
    assert BackendRegistry(use_entry_points=False).resolve("memory") is MemoryStorage
    with pytest.raises(UnknownBackend):
        BackendRegistry(use_entry_points=False).resolve("plug")


def test_installed_entry_points_name_the_builtins() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="wa_relay.storage")}
    assert names.get("memory") == "storage.memory:MemoryStorage"
    assert names.get("lmdb") == "storage.lmdb:LmdbStorage"
