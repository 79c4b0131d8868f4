"""The admin side of a node: its HTTP listener (``/metrics``, ``/health``, ``/ready``,
:mod:`.http`), and the operator commands that read it (``wa-relay status``,
:mod:`.status`; ``backup``/``restore``, :mod:`.backup`)."""

from .http import serve_admin

__all__ = ["serve_admin"]
