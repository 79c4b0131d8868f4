"""wa-cli: the wa-relay client. It does all the cryptography (Olm via vodozemac,
account keys via pynacl) and keeps one device's state encrypted under ``--home``.

Modules: :mod:`cli.crypto` (primitives' wrappers), :mod:`cli.state` (local store),
:mod:`cli.connection` (one authenticated WebSocket), :mod:`cli.client` (async API),
:mod:`cli.payload` (end-to-end plaintext format), :mod:`cli.output` (human vs
``--json``), :mod:`cli.commands` (the Click commands).
"""
