"""The one exception type for bad user input.

Anything the user can get wrong (a path, a file's contents, a flag value) raises
`UserInputError` with a single line naming the file, the record and what is wrong.
The CLI prints that line to stderr and exits with code 2, without a traceback.
"""


class UserInputError(Exception):
    """Bad input: the message is one line, fit to show the user as is."""

    exit_code = 2
