"""``python -m cli`` = ``wa-cli`` (:func:`run`)."""

import signal
import sys

_STOP = {signal.SIGINT, signal.SIGTERM}


def _checkpoint() -> None:
    """A Python call: the interpreter runs pending signal handlers at its start."""


def run() -> None:
    """The ``wa-cli`` entry point: Ctrl-C (or SIGTERM) while Python still loads the
    program ends it with "interrupted" and exit code 130, not a ``KeyboardInterrupt``
    traceback, nor one of the errors a ``KeyboardInterrupt`` inside an import turns
    into (``RuntimeError: Error calling __set_name__``): both signals are held back
    while the program's modules load and taken once they are loaded."""
    term = False
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
        try:
            from cli.commands.root import main
        finally:
            if signal.SIGTERM in signal.sigpending():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # dropped when unblocked
                term = True
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)  # a held SIGINT raises now
        _checkpoint()
    except KeyboardInterrupt:
        term = True
    if term:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130)
    main(prog_name="wa-cli", obj={"process": True})


if __name__ == "__main__":
    run()
