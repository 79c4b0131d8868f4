"""wa-cli: the wa-relay client. It does all the cryptography (Olm via vodozemac,
account keys via pynacl) and keeps one device's state encrypted under ``--home``.

Modules: :mod:`cli.crypto` (primitives' wrappers), :mod:`cli.state` (local store),
:mod:`cli.connection` (one authenticated WebSocket), :mod:`cli.client` (async API),
:mod:`cli.payload` (end-to-end plaintext format), :mod:`cli.output` (human vs
``--json``), :mod:`cli.commands` (the Click commands). Multi-device:
:mod:`cli.linkcode` (linking codes and sealed account material, no I/O),
:mod:`cli.linking` (the new device's side: ``open_link``, ``link_device``),
:mod:`cli.devices` (the primary's side: approve, remove; device-list notices).
"""
