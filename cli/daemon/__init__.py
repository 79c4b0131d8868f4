"""``wa-cli daemon``: one process keeps a device's connection, state and keys and serves
JSON-RPC 2.0 (docs/jsonrpc.md) to other programs and to the other ``wa-cli`` commands of
its home."""
