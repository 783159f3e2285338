"""The ``ndt`` command line: one console script, one subcommand per job.

Each subcommand lives in its own ``ndt.cmd_*`` module exposing ``register(subparsers)``;
heavy libraries are imported inside the handlers so ``ndt --help`` stays fast.
Errors a user can fix (:class:`ndt.errors.NdtError`, a file that cannot be read or written) are printed
as one line, exit code 2; anything else is a bug in ndt: one line too, exit code 1, and the traceback
with ``NDT_DEBUG=1``. SIGTERM ends a command as Ctrl-C does, its clean-ups run (an emulated network
and the controller it started are taken down), exit code 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ndt import __version__
from twin.state.errors import NdtError

COMMAND_MODULES = (
    "ndt.cmd_state",
    "ndt.cmd_sim",
    "ndt.cmd_dataset",
    "ndt.cmd_bench",
    "ndt.cmd_optimize",
    "ndt.cmd_demo",
    "ndt.cmd_train",
    "ndt.cmd_predict",
    "ndt.cmd_whatif",
    "ndt.cmd_plan",
    "ndt.cmd_intervals",
    "ndt.cmd_tails",
    "ndt.cmd_eval",
    "ndt.cmd_controller",
    "ndt.cmd_calibrate",
    "ndt.cmd_loop",
    "ndt.cmd_replay",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks and context managers run."""


def _terminate(signum, _frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker ends as it would without the handler
        os._exit(128 + signum)
    raise Terminated()


_MAIN_PID = os.getpid()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndt",
        description=(
            "ndt, a network digital twin: a packet-level simulator, a graph-neural-network twin "
            "(RouteNet-E), an optimizer of OSPF weights and an OpenFlow controller that closes the loop."
        ),
        epilog="Run 'ndt COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"ndt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    parser.set_defaults(commands=subparsers.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own usage, not ndt's
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args) or 0)
    except BaseException as exc:
        _end_progress_line()
        return _report(args.command, exc)


def _report(command: str, exc: BaseException) -> int:
    """Print what went wrong as one line; the exit code."""
    if isinstance(exc, NdtError):
        print(f"ndt {command}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, Terminated):
        print(f"ndt {command}: terminated", file=sys.stderr)
        return 143
    if isinstance(exc, KeyboardInterrupt):
        print(f"ndt {command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):  # the reader (head, less) has gone: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ndt {command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    if not isinstance(exc, Exception) or os.environ.get("NDT_DEBUG"):
        raise exc
    print(f"ndt {command}: internal error ({type(exc).__name__}: {str(exc)[:200]}); please report it, "
          "NDT_DEBUG=1 shows the traceback", file=sys.stderr)
    return 1


def _end_progress_line() -> None:
    """Close the progress bars an error cut short, so its message starts a line of its own."""
    bars = getattr(getattr(sys.modules.get("tqdm"), "tqdm", None), "_instances", None)
    for bar in list(bars or ()):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
