"""``wa-relay reshape --finish`` asks the node first (docs/operations.md, "Reshaping a
cluster", "A stuck handoff").

Forgetting the previous cluster file while this node still has users to hand over,
or users whose handoff is stuck, would strand their state here: the node would no
longer know the previous ring. So ``--finish`` asks the node's admin listener
(``/health`` -> ``handoff``, as ``wa-relay status`` does) and refuses unless the node
serves the new ring and says its handoff is done with nothing stuck. A node that does
not answer is refused too, unless the operator forces it (a node down for good).
"""

from __future__ import annotations

import json
from typing import Any

from relay.admin.reshape import ReshapeError
from relay.admin.status import HttpError, http_get, stuck_lines
from relay.config import NodeConfig
from relay.config.ring import Ring

PATIENCE = 5.0
"""Seconds to wait for the node's ``/health``."""


class FinishRefused(ReshapeError):
    """The node says its handoff is not done, something is stuck, or it serves another
    ring (CLI exit code 2)."""


class NodeSilent(Exception):
    """The node's handoff state cannot be asked: no admin listener, not running, or not
    answering as this node (CLI exit code 1, unless ``--force``)."""


async def ask_node(config: NodeConfig, patience: float = PATIENCE) -> dict[str, Any]:
    """The node's ``/health`` answer (a dict with ``node``, ``ring``, ``handoff``: see
    docs/operations.md, "Admin listener: metrics, health, readiness").

    Raises:
        NodeSilent: ``config`` has no admin listener (``admin_port = 0``), nothing
            answers at its admin URL within ``patience`` seconds, or the answer is not
            this node's ``/health``.
    """
    if config.admin_url is None:
        raise NodeSilent(f"node {config.id} has no admin listener (admin_port = 0 in its "
                         "node.toml): its handoff state cannot be asked")
    url = config.admin_url + "/health"
    try:
        _, body = await http_get(url, patience)  # 503 (storage) still says the handoff
        health = json.loads(body)
    except (HttpError, ValueError) as exc:
        raise NodeSilent(f"node {config.id} does not answer ({exc}): is it running?") from exc
    if (not isinstance(health, dict) or health.get("node") != config.id
            or not isinstance(health.get("handoff"), dict)):
        raise NodeSilent(f"{url} does not answer as node {config.id}'s /health")
    return health


def refusal(config: NodeConfig, health: dict[str, Any]) -> str | None:
    """Why this node's reshape cannot be finished, from its ``/health`` answer
    (:func:`ask_node`): it serves another ring than ``config``'s cluster file (it has
    not taken the reshape up), users remain to be handed over or to come in, or a
    handoff is stuck. ``None`` when it can be finished."""
    ring = Ring(config.cluster).version
    if health.get("ring") != ring:
        return (f"node {config.id} serves ring {str(health.get('ring'))[:12]}, not the "
                f"ring of its cluster file ({ring[:12]}): it has not taken the reshape up "
                "(a running 'wa-relay serve' does within a second, or logs why not: "
                "'cluster file ... refused'); restart it with both files and let its "
                "handoff finish first")
    handoff = health["handoff"]
    stuck = handoff.get("stuck") or 0
    if handoff.get("done") and not stuck:
        return None
    left = []
    if handoff.get("remaining"):
        left.append(f"{handoff['remaining']} users to hand over"
                    + (f" ({stuck} STUCK)" if stuck else ""))
    if handoff.get("waiting_for"):
        left.append("users may still come in from " + ",".join(handoff["waiting_for"]))
    lines = [f"node {config.id}'s handoff is not done: {'; '.join(left) or 'not yet'}. "
             "Finishing now would strand those users' state at their old home."]
    lines += stuck_lines(handoff)
    lines.append("Run --finish again once 'wa-relay status' shows 'handoff done' here.")
    return "\n".join(lines)


async def check_finish(config: NodeConfig, *, force: bool = False,
                       patience: float = PATIENCE) -> str | None:
    """May the reshape of the node of ``config`` be finished? Asks the node.

    Returns:
        ``None`` if the node says its handoff is done; with ``force``, a warning to
        print when the node does not answer.

    Raises:
        FinishRefused: the node answers and its reshape is not finished
            (:func:`refusal`), ``force`` or not.
        NodeSilent: the node does not answer and ``force`` is not given.
    """
    try:
        health = await ask_node(config, patience)
    except NodeSilent as exc:
        if not force:
            raise
        return (f"{exc}; finishing anyway (--force): users it had not handed over stay "
                "stranded in its data")
    why = refusal(config, health)
    if why is not None:
        raise FinishRefused(why)
    return None
