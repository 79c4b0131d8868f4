"""Serving device connections: the accept loop, the per-connection reader and dispatch, device auth, acks."""
