"""What a node does, as per-service handler tables.

Each service module maps the request frame types it serves to a handler
``async (caller, frame) -> answer | None`` (:data:`relay.services.base.Handler`);
:func:`relay.services.table.node_table` merges them into the one table a
connection dispatches through (:mod:`relay.serving.server`). Requests tied to one
connection's own state (``hello``, ``auth``, ``peer_auth``, ``ping``,
``link_open``, ``sync``, ``ack``) and the batched ``send`` / ``group_send`` runs
are served by the connection itself.
"""
