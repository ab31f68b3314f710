"""Plain-text layout for the commands: everything they print fits the terminal.

The width is ``shutil.get_terminal_size``'s (which reads ``COLUMNS`` first and falls back to
80 columns when output is not a terminal), kept between ``MIN_WIDTH`` and ``MAX_WIDTH``:
narrower is unreadable, wider lines are hard to follow.
"""
import shutil
import textwrap
from typing import List

MIN_WIDTH = 40
MAX_WIDTH = 100


def terminal_width() -> int:
    """The width to lay text out in: the terminal's (or ``COLUMNS``), at most ``MAX_WIDTH``."""
    columns = shutil.get_terminal_size((80, 24)).columns
    return max(MIN_WIDTH, min(MAX_WIDTH, columns))


def wrap(text: str, width: int, indent: str = "", first: str = "") -> List[str]:
    """``text`` wrapped to ``width`` columns; the first line starts with ``first`` (padded to
    the indent's length), the others with ``indent``. A word longer than a line (a path) is
    never split, so that it can be copied: it gets a line of its own and overflows."""
    lead = first.ljust(len(indent)) if first else indent
    lines = textwrap.wrap(text, width, initial_indent=lead, subsequent_indent=indent,
                          break_on_hyphens=False, break_long_words=False)
    return lines or [lead.rstrip()]


def paragraph(text: str, width: int) -> str:
    """Each line of ``text`` wrapped to ``width``, blank lines kept."""
    out = []  # type: List[str]
    for line in text.split("\n"):
        out.extend(wrap(line, width) if line.strip() else [""])
    return "\n".join(out)


def help_width() -> int:
    """The width argparse wraps help in (the terminal's minus 2), for text we pre-wrap."""
    return max(MIN_WIDTH, shutil.get_terminal_size((80, 24)).columns - 2)


def help_text(*blocks: object) -> str:
    """Help text for a ``RawDescriptionHelpFormatter`` parser, wrapped to ``help_width()``.

    A block is a paragraph (a string) or a list of ``(term, text)`` rows, shown as an
    indented list with the text aligned after the longest term.
    """
    width = help_width()
    out = []  # type: List[str]
    for block in blocks:
        if isinstance(block, str):
            out.extend(wrap(block, width))
        else:
            rows = list(block)  # type: ignore[call-overload]
            term = max(len(t) for t, _ in rows)
            indent = " " * (2 + term + 2)
            for t, text in rows:
                out.extend(wrap(text, width, indent, "  " + t))
        out.append("")
    return "\n".join(out).rstrip() + "\n"
