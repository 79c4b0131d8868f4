"""``wa-relay admin``: operator actions on a node, one module per subcommand group.

``user`` (:mod:`relay.admin.user_commands`): look a user up, purge a device queue,
block an account. Other subcommands (e.g. ``invite``) join this group.
"""

from __future__ import annotations

import click

from relay.admin.user_commands import user


@click.group()
def admin() -> None:
    """Operator actions on a node (users, ...)."""


admin.add_command(user)
