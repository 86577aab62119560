"""The ``atp-viz`` command: the same library calls the dashboard makes, with JSON output.

Results go to stdout (``--json``: exactly one JSON object), progress to stderr. Exit codes: 0 done;
2 bad input, refused with one line on stderr before anything is loaded or written; 1 a run that failed
(disk full, a dead Ray worker, a damaged store), one line on stderr, every finished result stored;
130 interrupted. A traceback never reaches the user.

One module per command family, each adding its parsers (shared options come from ``options.py`` as
argparse parents) and naming its commands: ``points`` (schedule, prune, errors, eval, speed),
``sweeps`` (sweep, sweep2d, predict-beta, compare), ``searches`` (search), ``assets`` (models, corpora).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atp_viz.cli import assets, points, searches, sweeps
from atp_viz.cli.options import EXIT_BAD_INPUT, EXIT_FAILED, CliError, Parser, close_bars
from atp_viz.errors import first_line
from atp_viz.store import to_jsonable

FAMILIES = (points, sweeps, searches, assets)
COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    name: command for family in FAMILIES for name, command in family.COMMANDS.items()
}
# errors of the machine rather than of the input: the run failed (exit 1) though the input was fine
FAILED_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EROFS}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="atp-viz", description="Layer-wise sparsity for LLMs: ATP, OWL, AlphaPruning, uniform.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def human(result: dict[str, Any]) -> str:
    """A readable summary when --json is not given."""
    lines = []
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            value = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            value = "\n  " + "\n  ".join(
                json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}) for row in value
            )
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


SHOW_WARNING = warnings.showwarning


def one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any
) -> None:
    """atp-viz's own warnings (recovered store, rebuilt cache, clipped schedule) as one line each."""
    if "atp_viz" not in Path(filename).parts:
        SHOW_WARNING(message, category, filename, lineno, *args, **kwargs)
        return
    text = str(message).strip().splitlines()
    print(f"atp-viz: warning: {text[0] if text else category.__name__}", file=sys.stderr, flush=True)


def exit_code(exc: Exception) -> int:
    """2 for bad input (the library's ValueError, the CLI's own checks, a path that cannot be used);
    1 for a run that failed: the machine (disk full, I/O), a dead Ray worker, the store, anything else."""
    if isinstance(exc, (ValueError, CliError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError) and exc.errno not in FAILED_ERRNOS:
        return EXIT_BAD_INPUT  # a missing or unreadable path, a model name the hub does not know
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings():  # a recovered store or rebuilt cache is reported in one line
            warnings.showwarning = one_line_warning
            result = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        close_bars()
        print("atp-viz: interrupted; finished results are in the store", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback
        close_bars()
        code = exit_code(exc)
        failed = "run failed: " if code == EXIT_FAILED else ""
        print(f"atp-viz: error: {failed}{first_line(exc)}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(to_jsonable(result), allow_nan=True))
    elif "recipe" in result:
        print(result["recipe"], end="")
    else:
        print(human(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
