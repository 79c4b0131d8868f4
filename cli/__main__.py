"""``python -m cli`` = ``wa-cli``."""

from cli.commands import main

if __name__ == "__main__":
    main(prog_name="wa-cli")
