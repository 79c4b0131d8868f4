"""wa-relay: the relay node (protocol, ring, server, federation, directory)."""
