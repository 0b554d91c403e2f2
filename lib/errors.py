"""The one exception type the command line turns into a clean one-line message."""


class ConfigError(ValueError):
    """A problem with what the user asked for: a bad flag value, missing data, an incompatible checkpoint.

    train_val.py prints the message on one line (no traceback) and exits with status 2. Library code raises
    it for anything the user can fix; genuine bugs stay ordinary exceptions with tracebacks.
    """
