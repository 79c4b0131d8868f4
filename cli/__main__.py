"""``python -m cli`` = ``wa-cli`` (:func:`run`)."""

# Hold SIGINT and SIGTERM before anything else of ours runs: the built-in ``_signal``
# needs no import work (``signal`` builds its enums first, a window in which a Ctrl-C
# was a KeyboardInterrupt traceback through this module).
import _signal

_signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM})

import signal  # noqa: E402
import sys  # noqa: E402

_STOP = {signal.SIGINT, signal.SIGTERM}


def run() -> None:
    """The ``wa-cli`` entry point: Ctrl-C (or SIGTERM) while Python still loads the
    program ends it with "interrupted" and exit code 130, not a ``KeyboardInterrupt``
    traceback, nor one of the errors a ``KeyboardInterrupt`` inside an import turns
    into (``RuntimeError: Error calling __set_name__``): both signals are held back
    while the program's modules load and Click parses the command line, taken when the
    command starts (:class:`cli.commands.root._Root`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
    from cli.commands.root import main
    if signal.sigpending() & _STOP:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130)  # exits with both still blocked: nothing else runs
    # still blocked: the root group takes them when the command starts and blocks them
    # again when it is over (Click's parsing and teardown never see a KeyboardInterrupt)
    main(prog_name="wa-cli", obj={"process": True})


if __name__ == "__main__":
    run()
