"""wa-cli: the wa-relay client. It does all the cryptography (Olm via vodozemac,
account keys via pynacl) and keeps one device's state encrypted under ``--home``.

Layers (imports only point down; ``tests/cli/test_cli_layers.py`` checks it):

- :mod:`cli.session`: transport and state: :mod:`~cli.session.connection` (one
  authenticated WebSocket), :mod:`~cli.session.session` (the ``Session`` every feature
  uses: key directory, ordered encrypted requests), :mod:`~cli.session.state` and its
  vault, store, journal and inbox, :mod:`~cli.session.crypto` (primitives' wrappers).
- :mod:`cli.features`: devices, linking (:mod:`~cli.features.linkcode` without I/O,
  :mod:`~cli.features.linking` the new device's side), 1:1 sending and receiving,
  groups, media; each takes a ``Session`` and never imports the facade.
- :mod:`cli.client`: the thin facade (``Client`` = ``Session`` + the features' methods).
- Front ends: :mod:`cli.commands` (Click) and :mod:`cli.output` (human vs ``--json``).

:mod:`cli.errors` and :mod:`cli.events` are the vocabulary shared by all layers.
"""
