"""Progress bars: the one place where the project makes them.

A bar redraws itself with carriage returns several times a second. On a terminal that is one line; in a log file
or CI output every frame is kept, and a few minutes of training leave hundreds of kilobytes of frames around the
log lines. So a bar is drawn only when its stream (stderr) is a terminal, and `show=False` (the command line's
`--no-progress`) hides it there too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

_hidden = False  # every bar is off: the command line's --no-progress (`bars_hidden`)


@contextmanager
def bars_hidden(hidden: bool = True) -> Iterator[None]:
    """Within the block, draw no bar when `hidden` (the command line's `--no-progress`, which also reaches bars
    that no `show` argument does); the previous state comes back after it."""
    global _hidden
    previous, _hidden = _hidden, hidden or _hidden
    try:
        yield
    finally:
        _hidden = previous


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """A tqdm bar over `iterable` (or one updated by hand) with tqdm's `options` (`total`, `desc`, `unit`,
    `leave`, ...), drawn only on a terminal and never when `show` is False or bars are hidden."""
    # disable=None is tqdm's "disable unless the output stream is a TTY".
    return tqdm(iterable, disable=None if show and not _hidden else True, **options)
