"""``wa-cli send NAME|USER_ID TEXT`` and ``wa-cli send --group GROUP TEXT``: through the
daemon of the home if one runs (:mod:`cli.daemon.remote`), else over a connection of
this process; with no relay reachable the message waits in the local outbox
(:mod:`cli.features.outbox`, status ``pending``).

Exit codes: 0 once the message is stored, queued or pending, also if Ctrl-C or SIGTERM
came after the request left (it is then finished, not abandoned); 130 if the signal
stopped it before; 2 for an unknown contact or group; 1 for other failures (a send
whose answer never came names its id for ``send --retry``).
"""

from __future__ import annotations

from cli.commands._common import (
    AppContext,
    CliError,
    UnknownName,
    failures,
    resolve_recipient,
    state_of,
    user_label,
)
from cli.commands._events import lists_shown
from cli.commands._signals import Guard, run_interruptible
from cli.commands.basics import reply_target
from cli.daemon.jsonrpc import SEND_UNKNOWN, USAGE_ERROR
from cli.daemon.remote import RemoteError, find_daemon
from cli.errors import SendUnknown
from cli.features.outbox import PENDING
from cli.features.posting import Posted, post_text
from cli.output import escape
from cli.session.group_state import GroupError

__all__ = ["send_text"]


def send_text(app: AppContext, text: str, *, recipient: str | None = None,
              group: str | None = None, reply_to: str | None = None) -> None:
    """Send ``text`` to ``recipient`` (name or user id) or ``group`` and print
    ``{"id", "status", "to"}`` (``{"id", "status", "group", "group_id"}``); with
    ``reply_to`` (a message id or a prefix of at least 8 hex digits, of the same
    conversation) as a reply quoting it.

    Raises:
        UnknownName: (exit 2) unknown contact or group.
        click.BadParameter: (exit 2) unknown ``reply_to`` message, or one of another
            conversation.
        CliError: (exit 1) the send failed.
        Interrupted: (exit 130) a signal stopped it before the request left.
    """
    remote = find_daemon(app.home)
    if remote is not None:
        with remote:
            return _via_daemon(app, remote, text, recipient, group, reply_to)
    with state_of(app) as state:
        user_id = None
        if recipient is not None:
            user_id = conversation = resolve_recipient(state, recipient)
        else:
            try:
                conversation = state.groups.find(group).state.hex_id
            except GroupError as exc:
                raise UnknownName(str(exc), "unknown_group", param_hint="--group") from exc
        quoted = reply_target(state, reply_to, conversation)
        guard = Guard()

        async def run() -> Posted:
            return await post_text(state, lambda: app.connect(state), text, to=user_id,
                                   group=group, reply_to=quoted, on_commit=guard.commit)

        try:
            with failures(), lists_shown(app, state):
                posted = run_interruptible(run, guard=guard)
        except CliError as exc:
            if isinstance(exc.__cause__, SendUnknown) and app.out.json_mode:
                _emit(app, Posted(exc.__cause__.msg_id, "unknown", user_id or "", "", group or ""),
                      "")
            raise
        name = user_label(state, posted.to) if posted.to else f"group {escape(posted.group)}"
    _emit(app, posted, name)


def _emit(app: AppContext, posted: Posted, name: str) -> None:
    obj = {"id": posted.msg_id.hex(), "status": posted.status}
    if posted.group_id or not posted.to:
        obj.update(group=posted.group, group_id=posted.group_id)
    else:
        obj["to"] = posted.to
    if posted.status == PENDING:
        if posted.reason:
            app.out.note(posted.reason)
        human = (f"no relay reachable: kept for {name} in the local outbox (pending), sent "
                 f"when a connection returns; id {posted.msg_id.hex()}")
    else:
        human = f"sent to {name} ({posted.status}) id {posted.msg_id.hex()}"
    app.out.emit(obj, human)


def _via_daemon(app: AppContext, remote, text: str, recipient: str | None,  # noqa: ANN001
                group: str | None, reply_to: str | None) -> None:
    params = {"text": text, **({"to": recipient} if recipient is not None else {"group": group}),
              **({"reply_to": reply_to} if reply_to is not None else {})}
    try:
        result = remote.call("send", params, shielded=True)
    except RemoteError as exc:
        if exc.code == USAGE_ERROR:
            reason = (exc.data or {}).get("reason", "usage")
            hint = ("--reply-to" if reason == "bad_reply" else
                    "--group" if group is not None else "NAME|USER_ID")
            raise UnknownName(exc.message, reason, param_hint=hint) from exc
        if exc.code == SEND_UNKNOWN and app.out.json_mode:
            app.out.emit({"id": (exc.data or {}).get("id", ""), "status": "unknown",
                          **({"to": recipient} if recipient is not None else {"group": group})},
                         "")
        raise CliError(f"daemon: {escape(exc.message)}") from exc
    posted = Posted(bytes.fromhex(result["id"]), result["status"], result.get("to", ""),
                    result.get("group_id", ""), result.get("group", ""))
    name = escape(recipient) if recipient is not None else f"group {escape(posted.group)}"
    _emit(app, posted, name)
