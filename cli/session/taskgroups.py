"""Exception groups from the client's nurseries, made readable: :func:`unwrap_single`
re-raises a group holding exactly one exception as that exception (nothing is
swallowed; a lone ``trio.Cancelled`` stays itself). The one implementation lives in
the connection layer (:mod:`relay.net._groups`), which ``cli`` builds on."""

from __future__ import annotations

from relay.net._groups import single_leaf, unwrap_single

__all__ = ["single_leaf", "unwrap_single"]
