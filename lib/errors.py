"""The one exception type the command line turns into a clean one-line message."""

# How torch's DataLoader re-raises an error of a worker process in the main one: type(error)(this text, the
# worker's traceback, then "module.ErrorType: original message").
_WORKER_ERROR_START = "Caught "
_WORKER_TRACEBACK = "\nOriginal Traceback"


def _original_message(message):
    """The message itself, without the worker traceback that a DataLoader worker's re-raise wraps it in."""
    text = str(message)
    if not (text.startswith(_WORKER_ERROR_START) and _WORKER_TRACEBACK in text):
        return message
    last = [line for line in text.splitlines() if line.strip()][-1]
    kind, sep, original = last.partition(": ")
    return original if sep and " " not in kind else message


class ConfigError(ValueError):
    """A problem with what the user asked for: a bad flag value, missing data, an incompatible checkpoint.

    train_val.py prints the message on one line (no traceback) and exits with status 2. Library code raises
    it for anything the user can fix (also inside DataLoader workers: the message survives the trip to the main
    process without the worker's traceback); genuine bugs stay ordinary exceptions with tracebacks.
    """

    def __init__(self, message=""):
        super().__init__(_original_message(message))
