"""The daemon's methods for the rest of the ``wa-cli`` commands (docs/jsonrpc.md): each
runs the command's core (:mod:`cli.commands._route`) on the daemon's state and
connection, and answers ``{"items": [OBJ], "text": [HUMAN], "notes": [TEXT]}``: the
objects ``wa-cli CMD --json`` prints, their human lines and the notes (stderr). With
``"stream": true`` the notes written before the first result are sent as ``note``
notifications as they come instead (:class:`_Notes`).

Registered into :data:`cli.daemon.methods.METHODS` on import (by :mod:`cli.daemon.server`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import trio

from cli.commands import basics, contacts, contacts_more, devices, messaging, requests, settings
from cli.commands._common import check_name, error_code
from cli.commands._route import Recorder
from cli.daemon.core import Device
from cli.daemon.jsonrpc import INVALID_PARAMS, RUNTIME_ERROR, USAGE_ERROR, Peer, RpcError
from cli.daemon.methods import errors, group_change, method, user_param
from cli.features.group_admin import leave_group, promote_member, rename_group

__all__ = ["click_errors"]

REQUIRED = object()
"""A parameter without default (see :func:`_core_method`)."""


@contextmanager
def click_errors() -> Iterator[None]:
    """Translate a core's command-line errors into error answers: usage errors (exit 2)
    -> :data:`USAGE_ERROR` with ``data.reason`` (the ``--json`` error code) and
    ``data.param`` (the parameter, if one); other ones -> :data:`RUNTIME_ERROR`."""
    try:
        yield
    except click.UsageError as exc:
        data: dict[str, Any] = {"reason": error_code(exc)}
        hint = getattr(exc, "param_hint", None)
        if isinstance(hint, str):
            data["param"] = hint
        raise RpcError(USAGE_ERROR, exc.message, data) from exc
    except click.ClickException as exc:
        raise RpcError(RUNTIME_ERROR, exc.message, {"reason": error_code(exc)}) from exc


def _check(params: dict, spec: dict[str, tuple[type | tuple[type, ...], Any]]) -> dict:
    unknown = params.keys() - spec.keys()
    if unknown:
        raise RpcError(INVALID_PARAMS, f"unknown parameter {sorted(unknown)[0]!r}")
    kwargs = {}
    for key, (kind, default) in spec.items():
        value = params.get(key)
        if value is None:
            if default is REQUIRED:
                raise RpcError(INVALID_PARAMS, f"{key!r} is required")
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RpcError(INVALID_PARAMS, f"{key!r} must be {names}")
        kwargs[key] = value
    return kwargs


def _core_method(name: str, core: Callable[..., Awaitable[None]],
                 spec: dict[str, tuple[type | tuple[type, ...], Any]],
                 check: Callable[[dict], None] | None = None) -> None:
    """Register ``core`` as method ``name``; ``spec``: parameter -> (JSON type, default or
    :data:`REQUIRED`); ``check``: more validation of the parameters."""

    async def handler(device: Device, peer: Peer, params: dict) -> dict:
        stream = params.get("stream", False)
        if not isinstance(stream, bool):
            raise RpcError(INVALID_PARAMS, "'stream' must be true or false")
        kwargs = _check({k: v for k, v in params.items() if k != "stream"}, spec)
        if check is not None:
            check(kwargs)
        notes = _Notes(peer)
        out = Recorder(notes if stream else None)
        failure: RpcError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notes.run)
            try:
                with errors(), click_errors():
                    await core(device.state, out, device.session, **kwargs)
            except RpcError as exc:  # raised below: the notes before it are written first
                failure = exc  # (raised here, it would cancel their task)
            finally:
                notes.close()  # its task writes what is left, then ends
        if failure is not None:
            raise failure
        return out.result()

    handler.__doc__ = core.__doc__
    method(name)(handler)


class _Notes:
    """The notes of a command's core, written to its caller as ``note`` notifications
    (``{"text": TEXT}``) as they come (:meth:`run`), in order and before the answer.
    Holds at most the notes written meanwhile (a core writes a few); after the caller
    went away they are dropped."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._pending: deque[str] = deque()
        self._wake = trio.Event()
        self._closed = False
        self._gone = False

    def __call__(self, text: str) -> None:
        if not self._gone:
            self._pending.append(text)
            self._wake.set()

    def close(self) -> None:
        """No more notes: :meth:`run` returns once it wrote the pending ones."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Write the notes as they come until :meth:`close` (the end of the core does
        not cancel it: it ends after the last note, never within a line)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                text = self._pending.popleft()
                if not await self._peer.notify("note", {"text": text}):
                    self._gone = True
                    self._pending.clear()
            if self._closed:
                return


def _approve_check(kwargs: dict) -> None:
    if not kwargs.get("yes") and kwargs.get("fingerprint") is None:
        raise RpcError(USAGE_ERROR, "the daemon cannot ask: give the new device's key "
                       "fingerprint (\"fingerprint\") or \"yes\": true",
                       {"reason": "confirm", "param": "--yes"})


_core_method("contactsAdd", contacts.add_contact,
             {"name": (str, REQUIRED), "user_id": (str, REQUIRED), "force": (bool, False)})
_core_method("contactsRemove", contacts_more.remove_contact, {"name": (str, REQUIRED)})
_core_method("block", contacts_more.set_blocked,
             {"who": (str, REQUIRED), "blocked": (bool, True)})
_core_method("requestAccept", requests.accept_request,
             {"key": (str, REQUIRED), "name": (str, None)})
_core_method("requestDecline", requests.decline_request,
             {"key": (str, REQUIRED), "block": (bool, False)})
_core_method("settings", settings.change_settings,
             {"receipts": (str, None), "requests": (str, None)})
_core_method("sendTyping", basics.send_typing, {"to": (str, REQUIRED), "stop": (bool, False)})
_core_method("setTimer", basics.set_timer,
             {"seconds": (int, REQUIRED), "to": (str, None), "group": (str, None)})
_core_method("resend", messaging.resend_message, {"id": (str, REQUIRED)})
_core_method("devicesList", devices.list_devices, {})
_core_method("devicesRemove", devices.remove_device, {"device_id": (int, REQUIRED)})
_core_method("devicesApprove", devices.approve_device,
             {"code": (str, REQUIRED), "history": (bool, True), "yes": (bool, False),
              "fingerprint": (str, None)}, _approve_check)


def _group(params: dict) -> str:
    value = params.get("group")
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "'group' must be a string")
    return value


@method("groupLeave")
async def group_leave(device: Device, peer: Peer, params: dict) -> dict:
    """``{"group"}`` -> as ``groupCreate``: leave the group (``wa-cli group leave``)."""
    return await group_change(device, leave_group, _group(params))


@method("groupRename")
async def group_rename(device: Device, peer: Peer, params: dict) -> dict:
    """``{"group", "name"}`` -> as ``groupCreate`` (``wa-cli group rename``; admins)."""
    name = params.get("name")
    if not isinstance(name, str):
        raise RpcError(INVALID_PARAMS, "'name' must be a string")
    with click_errors():
        check_name(name, "NEW_NAME")
    return await group_change(device, rename_group, _group(params), name)


@method("groupPromote")
async def group_promote(device: Device, peer: Peer, params: dict) -> dict:
    """``{"group", "member": NAME_OR_USER_ID}`` -> as ``groupCreate`` (``wa-cli group
    promote``; admins)."""
    return await group_change(device, promote_member, _group(params),
                               user_param(device, params, "member"))
