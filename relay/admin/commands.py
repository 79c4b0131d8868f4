"""``wa-relay admin``: operator actions on a node, one module per subcommand group.

``user`` (:mod:`relay.admin.user_commands`): look a user up, purge a device queue,
block an account. ``invite`` (:mod:`relay.admin.admin_command`): single-use
invite tokens.
"""

from __future__ import annotations

import click

from relay.admin.admin_command import invite
from relay.admin.user_commands import user


@click.group()
def admin() -> None:
    """Operator actions on a node: users, invites."""


admin.add_command(user)
admin.add_command(invite)
