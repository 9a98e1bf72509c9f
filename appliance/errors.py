"""Exception types shared by the library, the CLI and the TUI.

Every error the operator can cause (bad input, missing file, refused endpoint) derives from
ReckonError, whose message says what failed and what to do. The CLI prints it without a
traceback and exits with status 2.
"""


class ReckonError(Exception):
    """An error caused by input or configuration; the message is shown to the operator."""


class ConfigError(ReckonError):
    """Invalid configuration: workspace, endpoint, runtime or preset settings."""


class PackError(ReckonError):
    """A tool pack failed validation. The message names the file and the field."""

    def __init__(self, path, field: str, problem: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: {field}: {problem}")


class NetworkPolicyError(ConfigError):
    """An endpoint is neither loopback nor on the allowed on-prem host list."""


class NotFoundError(ReckonError):
    """A run, trace, dataset, eval set, candidate or bundle id does not exist."""
