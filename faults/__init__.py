"""The fault suite of wa-relay: ``python -m faults`` / ``make faults`` (docs/reliability.md).

Not part of the installed distribution; it drives the installed ``wa-relay``
and ``wa-cli`` programs as a user and an operator would, from the outside.

Modules, bottom up: :mod:`.owners` (which process opened a connection),
:mod:`.proxy` (the TCP proxy and its cut rules), :mod:`.nodes` (relay
processes behind the proxies), :mod:`.clients` (``wa-cli`` processes),
:mod:`.ledger` (the checker), :mod:`.world` (accounts, devices, one round's
operations), :mod:`.setup`, :mod:`.workload` (traffic, heal, drain),
:mod:`.kinds` (the fault kinds), :mod:`.rpc` and :mod:`.kinds_daemon` (the
daemon's kind, registered here), :mod:`.report`, :mod:`.run`.
"""

from . import kinds_daemon  # noqa: F401  (registers daemon_kill in kinds.KINDS)
