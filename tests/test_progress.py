"""progress_bar: tqdm's live bar on a terminal; whole lines, a few of them, in a log."""

from __future__ import annotations

import io
import time

from mobilebert_paddle.core.progress import LogLineBar, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_tqdm_live_bar():
    stream = Terminal()
    bar = progress_bar(range(5), file=stream, desc="work", mininterval=0)
    assert not isinstance(bar, LogLineBar)
    assert list(bar) == list(range(5))
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue()


def test_log_short_work_kept_bar_is_one_final_line():
    stream = io.StringIO()
    bar = progress_bar(total=200, file=stream, desc="finetune x", unit="step")
    assert isinstance(bar, LogLineBar)
    for _ in range(200):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.startswith("finetune x: 100%") and "200/200" in text


def test_log_short_transient_bar_writes_nothing():
    stream = io.StringIO()
    assert sum(progress_bar(range(50), file=stream, leave=False)) == sum(range(50))
    assert stream.getvalue() == ""


def test_log_long_work_is_a_line_per_interval_then_a_final_one():
    stream = io.StringIO()
    interval = dict(mininterval=0.05, maxinterval=0.05, delay=0.05)   # LOG_INTERVAL scaled down
    for _ in progress_bar(range(8), file=stream, desc="eval", leave=False, **interval):
        time.sleep(0.03)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and "\r" not in stream.getvalue()
    assert 2 <= len(lines) - 1 <= 6, lines          # a few lines, not one per item
    assert all(line.startswith("eval: ") for line in lines[:-1])
    assert "8/8" in lines[-2]                        # the log does not end half-way


def test_disabled_bar_writes_nothing():
    stream = io.StringIO()
    bar = progress_bar(total=3, file=stream, disable=True)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""
