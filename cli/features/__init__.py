"""What a device does, over a :class:`cli.session.session.Session`: devices, linking,
1:1 and group messaging, media. No module here imports the client facade (:mod:`cli.client`)."""
