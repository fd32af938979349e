"""The library's own error types. Each message names the problem and the fix; the CLI prints it
as one line (``--debug`` shows the traceback) and exits 2 for usage errors, 1 for failures."""
from __future__ import annotations


class SaeJaxError(Exception):
    """Base of the errors whose message is meant for the user as it is."""

    exit_code = 1


class ConfigError(SaeJaxError, ValueError):
    """A configuration (or command line) that cannot work."""

    exit_code = 2


class DataError(SaeJaxError, ValueError):
    """An activation file or array that cannot be trained on as it is."""


class CheckpointError(SaeJaxError, RuntimeError):
    """No checkpoint of a run can be restored intact."""


class ExportError(SaeJaxError, ValueError):
    """An export folder that cannot be written or read."""


class Interrupted(SaeJaxError):
    """A run stopped by SIGTERM or Ctrl-C after saving; rerunning the same command resumes it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
