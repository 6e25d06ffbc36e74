"""The one exception type for bad user input.

Anything the user can get wrong (a path, a file's contents, a flag value) raises
`UserInputError` with a single line naming the file, the record and what is wrong.
The CLI prints that line to stderr and exits with code 2, without a traceback.
`Interrupted` is how SIGINT / SIGTERM end a command: one line too, exit 130 / 143.
"""


class UserInputError(Exception):
    """Bad input: the message is one line, fit to show the user as is."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command. The CLI raises it from its signal handlers; work that
    can say where it stopped (the trainer: step and checkpoint) re-raises it with `detail`. The CLI
    prints one line, `mobilebert CMD: interrupted by SIGTERM at step 17; ...`, and exits 128 + signal."""

    def __init__(self, signal_name: str = "SIGINT", exit_code: int = 130, detail: str = ""):
        super().__init__(signal_name)
        self.signal_name, self.exit_code, self.detail = signal_name, exit_code, detail

    @classmethod
    def during(cls, interrupt: KeyboardInterrupt, detail: str) -> "Interrupted":
        """The same interrupt (a plain KeyboardInterrupt is SIGINT) with what was going on."""
        if isinstance(interrupt, Interrupted):
            return cls(interrupt.signal_name, interrupt.exit_code, interrupt.detail or detail)
        return cls(detail=detail)

    # The last one the CLI's signal handler raised: when the handler runs inside Python code that
    # Paddle's C++ called (a PyLayer's backward), Paddle re-raises it as an OSError of its own.
    raised: "Interrupted | None" = None

    @classmethod
    def behind(cls, error: BaseException) -> "Interrupted | None":
        """The interrupt that `error` is, or that Paddle wrapped into it; else None."""
        if isinstance(error, KeyboardInterrupt):
            return error if isinstance(error, Interrupted) else cls()
        if cls.raised is not None and f"Interrupted: {cls.raised.signal_name}" in str(error):
            return cls.raised
        return None

    def message(self) -> str:
        return f"interrupted by {self.signal_name}{' ' + self.detail if self.detail else ''}"
