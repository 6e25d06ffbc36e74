"""Progress bars: tqdm's live bar on a terminal, a plain line now and then in a log.

tqdm redraws its bar with a carriage return up to 10 times a second. On a terminal that is one
line that moves; written to a file, a pipe or a CI log it is every redraw, one after another
(~45 KB for the quickstart's minute of training). So when stderr is not a terminal, a bar is
one whole line every LOG_INTERVAL seconds (none for work that ends sooner) and, for a bar
that stays (`leave`, e.g. training), one final line with the totals.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

from tqdm import tqdm

LOG_INTERVAL = 30.0   # seconds between progress lines when stderr is not a terminal


def progress_bar(iterable: Optional[Iterable] = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on stderr (or `file=`): a live bar if that is a terminal, else log lines."""
    stream = kwargs.setdefault("file", sys.stderr)
    if is_interactive(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    for name in ("mininterval", "maxinterval", "delay"):
        kwargs.setdefault(name, LOG_INTERVAL)
    return LogLineBar(iterable, **kwargs)


def is_interactive(stream: Any) -> bool:
    """A terminal, or a Jupyter kernel's stderr (not a tty, but it renders a redrawn bar as one line)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules


class LogLineBar(tqdm):
    """tqdm whose every display is a whole line: no carriage returns, no padding, nothing to clear."""

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if msg == "":                      # tqdm clearing the bar on close: a log keeps its lines
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        self.shown = True
        return True

    def close(self) -> None:
        if not self.disable and (self.leave or getattr(self, "shown", False)):
            self._ema_dt = lambda: None    # the final line shows the overall rate, as tqdm's own does
            self.display()
        self.leave = False                 # tqdm's close then writes nothing more
        super().close()
