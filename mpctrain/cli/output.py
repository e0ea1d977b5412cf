"""Console output for the CLI: a styled label, then the message exactly as it was given.

Messages carry paths, TOML table names such as ``[rules]`` and text from the aggregator; Rich would read
their square brackets as markup, dropping words or raising ``MarkupError``. These consoles never parse
markup, so every message prints verbatim and only the labels built here are styled.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def plain_console(stderr: bool = False, *, soft_wrap: bool = True) -> Console:
    """A console that prints strings verbatim: no markup, no highlighting, and a long path is not broken."""
    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=soft_wrap)


def labelled(label: str, style: str, message: object) -> Text:
    """``label`` in ``style``, then ``message`` as plain text: safe for any console, markup or not."""
    return Text.assemble((label, style), " ", str(message))


def error(message: object) -> Text:
    return labelled("error:", "red", message)


def warning(message: object) -> Text:
    return labelled("warning:", "yellow", message)
