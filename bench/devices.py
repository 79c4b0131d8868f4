"""Issue 3 hook: sending to users with 1, 2, 4 and 8 devices.

To fill in once the client can add devices to an account (linking): for each
device count, a recipient account with that many linked devices, all live;
report the sender's encrypt time per message (one Olm copy per device) and the
end-to-end throughput (messages/s and envelopes/s = messages x devices), reusing
:func:`bench.send.pipeline`, :class:`bench.send.Inbox` (one per device) and
:func:`bench.send.report_run`.

Until then the scenario prints why it is skipped.
"""

from __future__ import annotations

import importlib.util

from .scenario import BenchContext

DEVICE_COUNTS = (1, 2, 4, 8)


def multi_device_supported() -> bool:
    """True once ``cli`` can add a device to an account (a ``cli.linking`` module)."""
    return importlib.util.find_spec("cli.linking") is not None


async def run(ctx: BenchContext) -> None:
    """Scenario (issue 3): fan-out to 1, 2, 4, 8 recipient devices; skipped for now."""
    if multi_device_supported():
        ctx.report.note("skipped: cli.linking exists now, but this scenario is not written "
                        "yet (see bench/devices.py)")
    else:
        ctx.report.note("skipped: the client cannot add a device to an account yet "
                        "(no linking in cli/; issue 3)")
