"""One exception type for problems the user can fix: the CLI and the plugin show its message, never a traceback."""


class OEEMError(Exception):
    """A user-facing error: the message names the file or setting at fault and what to do about it."""
