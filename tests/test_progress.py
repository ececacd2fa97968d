"""Progress bars are drawn only on a terminal, and never with --no-progress (show=False)."""

from __future__ import annotations

import io

from mrhp.progress import progress_bar


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
