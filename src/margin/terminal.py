"""Values shown on a terminal by the `margin` commands (ledger groups, key names, teams, tags, error messages):
rich never reads them as markup (a team named `[link=https://…]acme[/link]` is printed as such, not made a
link, and `[/x]` is no crash) and their control characters are escaped as the logs' are (`margin.logs`), so
no ESC sequence, CR, backspace or bidi override in a value can repaint or reorder what the terminal shows."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from margin.logs import printable, printable_lines


def plain(value: Any, style: str = "") -> Text:
    """`value` as literal text with every control character escaped (in `style`, if given)."""
    return Text(printable(str(value), limit=None), style=style)


def message(text: str) -> Text:
    """A message of several lines (an error naming a file's problems): literal, control characters escaped but
    its line breaks kept."""
    return Text(printable_lines(text))


def print_error(text: str) -> None:
    """One `error:` line on stderr, `text` literal (a model's, an upstream's or a file's words in it are no markup)."""
    from rich.console import Console

    line = Text.assemble(("error:", "bold red"), " ", message(text))
    Console(stderr=True, highlight=False).print(line, soft_wrap=True)  # one line: a long path was cut at 80 columns
