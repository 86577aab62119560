"""How an exception reads in one line (the CLI's error line, a job's error, a wrapped error's cause)."""

from __future__ import annotations

import re
import traceback

RAISED = re.compile(r"^[\w.]+(Error|Exception|Interrupt): ")  # a traceback's last line: ``SomeError: message``


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The line that says what went wrong: the last ``SomeError: ...`` line of a traceback carried in the
    message (a Ray worker's error holds the worker's traceback), else the message's first non-empty line,
    else the exception's type name; cut to ``limit`` characters when given."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if RAISED.match(line)]
    text = raised[-1] if raised else lines[0] if lines else type(exc).__name__
    return text if limit is None else text[:limit]


def plain_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as text without Python 3.11's ``^^^`` markers, for a thread's log line.

    Python 3.11 places those markers by parsing each source line with ``ast``, and in 3.11.7 two threads in
    ``ast`` at once can fail (``SystemError: AST constructor recursion depth mismatch``): a background thread that
    formats a traceback while Streamlit parses a page's script breaks that page's run."""
    frames = "".join(f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}\n'
                     for f in traceback.extract_tb(exc.__traceback__))  # fmt: skip
    return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {exc}"
