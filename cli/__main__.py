"""``python -m cli`` = ``wa-cli`` (:func:`run`)."""

import sys


def run() -> None:
    """The ``wa-cli`` entry point: Ctrl-C while Python still loads the program ends it
    with "interrupted" and exit code 130, not a ``KeyboardInterrupt`` traceback."""
    try:
        from cli.commands import main
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    main(prog_name="wa-cli", obj={"process": True})


if __name__ == "__main__":
    run()
