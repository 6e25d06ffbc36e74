"""What a command prints besides its JSON summary: log lines held until the command has accepted
its inputs (a bad input is then one stderr line, not the log of the work before it), and
libraries' stray output (paddle2onnx's prints, ONNX Runtime's and NNCF's loggers) kept off stdout.
"""


from __future__ import annotations

import contextlib
import logging
import os
import sys


class HeldLogs(logging.Filter):
    """Holds what one log handler would print until the command has accepted its inputs.

    A bad input must be one stderr line, but commands log as they read ("12 training examples",
    "no dev data"), and the error may come after that. So until `inputs_accepted()` (called where
    a command starts real work, e.g. train.start_output) or the command's end, records are held:
    printed once the inputs are accepted, dropped if the command ends with a UserInputError."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler, self.held, self.holding = handler, [], True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.holding:
            self.held.append(record)
            return False
        return True

    def release(self, show: bool = True) -> None:
        self.holding = False
        for record in self.held if show else ():
            self.handler.handle(record)
        self.held = []


_HELD_LOGS: list[HeldLogs] = []


def inputs_accepted() -> None:
    """The command's inputs are good: print the log lines held so far, and the rest as they come."""
    for held in _HELD_LOGS:
        held.release()


@contextlib.contextmanager
def logs_held_until_inputs_accepted():
    holders = [HeldLogs(handler) for handler in logging.getLogger().handlers]
    for holder in holders:
        holder.handler.addFilter(holder)
    _HELD_LOGS.extend(holders)
    try:
        yield holders
    finally:
        for holder in holders:
            holder.release()           # a no-op once released or dropped
            holder.handler.removeFilter(holder)
            _HELD_LOGS.remove(holder)


def drop_held_logs(holders: list[HeldLogs]) -> None:
    for holder in holders:
        holder.release(show=False)







@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 (C/C++ libraries' stdout included) and Python's sys.stdout (what
    rich's progress bars in NNCF write to) to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.WARNING):
    """onnxruntime.quantization logs a line per tensor on the root logger at INFO."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)
