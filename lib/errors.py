"""The one exception type the command line turns into a clean one-line message, and the argument checks the
blocks share (each block checks the arguments it takes, once)."""

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


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_optional_bool(name, value):
    """None (the block's default) or a real bool: a string such as "False" would otherwise read as True."""
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{name} must be True, False or None (the block's default), got {value!r}")


def check_dim(dim):
    if isinstance(dim, bool) or dim not in (1, 2, 3):
        raise ConfigError(f"dim must be 1, 2 or 3 (sequences, images, video), got {dim!r}")
