"""Progress bars are drawn only on a terminal, and never with --no-progress (show=False)."""

from __future__ import annotations

import io

from mrhp.progress import bars_hidden, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_never_when_hidden():
    log, terminal, hidden = io.StringIO(), Terminal(), Terminal()
    for stream, show in ((log, True), (terminal, True), (hidden, False)):
        for _ in progress_bar(range(3), show=show, file=stream, desc="work", mininterval=0):
            pass
    assert log.getvalue() == "" and hidden.getvalue() == ""
    assert "work" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_no_progress_hides_every_bar_inside_the_command_only():
    terminal = Terminal()
    with bars_hidden():  # what `mrhp CMD --no-progress` runs the command in: a bar asked with show=True is hidden
        for _ in progress_bar(range(3), file=terminal, desc="inside", mininterval=0):
            pass
    for _ in progress_bar(range(3), file=terminal, desc="after", mininterval=0):
        pass
    assert "inside" not in terminal.getvalue() and "after" in terminal.getvalue()
