"""Transport and state of one device: connection, session, vault, state store, journal, inbox."""
