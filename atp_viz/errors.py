"""How an exception reads in one line (the CLI's error line, a job's error, a wrapped error's cause)."""

from __future__ import annotations

import re

RAISED = re.compile(r"^[\w.]+(Error|Exception|Interrupt): ")  # a traceback's last line: ``SomeError: message``


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The line that says what went wrong: the last ``SomeError: ...`` line of a traceback carried in the
    message (a Ray worker's error holds the worker's traceback), else the message's first non-empty line,
    else the exception's type name; cut to ``limit`` characters when given."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if RAISED.match(line)]
    text = raised[-1] if raised else lines[0] if lines else type(exc).__name__
    return text if limit is None else text[:limit]
