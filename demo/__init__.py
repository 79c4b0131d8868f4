"""``python -m demo``: a 3-node wa-relay federation, two accounts on different home
nodes, three messages sent while the recipient is offline, then delivered and
decrypted in order. Prints every command it runs so a reader can repeat them.
"""
