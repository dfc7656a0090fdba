"""The error a training stage stops with; its exit code says whether the config (2) or an input (1) is at fault.

Its own module so that the checkpointing and sample-store code, which the stage commands build on, can raise it
without importing the commands' shared module.
"""


class StageError(Exception):
    """A run that cannot proceed; the message says which field or file. exit_code 2 = config, 1 = input."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
