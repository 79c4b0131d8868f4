"""``wa-cli``'s Click commands: one module per command or group; the root group is
:data:`cli.commands.root.main`.

Importing a module of this package does not register the commands: only
:mod:`cli.commands.root` imports them all, so that the other front end (the daemon's
JSON-RPC methods) can use a command's core without importing every command, the
``daemon`` command among them (that was an import cycle).
"""
