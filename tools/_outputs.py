"""Where the picture tools write and how they fail: default file names in the checkpoint's run folder, titles,
output paths checked before any computation, and the one-line error of a bad command line or input."""
import io
import os
import sys

from lib.engine.errors import write_error
from lib.engine.logger import replace_file
from lib.errors import ConfigError

CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")


def checkpoint_stem(path):
    name = os.path.basename(path)
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] or name
    return os.path.splitext(name)[0]


def run_folder(path):
    """The folder holding the checkpoint: its run folder."""
    return os.path.dirname(os.path.abspath(path))


def run_label(path):
    """The run a checkpoint belongs to, for titles: its folder (relative to here where it is below) / file."""
    folder = run_folder(path)
    relative = os.path.relpath(folder)
    shown = relative if not relative.startswith("..") else os.path.join(*folder.split(os.sep)[-4:])
    return f"{shown}/{os.path.basename(path)}"


def check_writable_folder(flag, folder):
    """One line when `folder` cannot be (created and) written, before any computation."""
    probe = os.path.abspath(folder)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError(f"{flag} {folder} is a file, not a folder")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: {probe} is not writable (pass {flag} somewhere you can write)")


def check_output_file(flag, path, suffixes=None):
    """One line when `path` cannot be written as a file of one of the suffixes, before any computation."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder: give a file name inside it")
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: the file name must end in one of {', '.join(suffixes)}")
    check_writable_folder(flag, os.path.dirname(os.path.abspath(path)))


def pyplot():
    """matplotlib.pyplot drawing into files only (the Agg backend: no display needed); imported when a tool draws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def image_suffixes():
    """The file types matplotlib writes (.png, .pdf, .svg, ...)."""
    pyplot()  # the backend that writes the files
    from matplotlib.figure import Figure  # a figure pyplot does not keep open
    return tuple(f".{ext}" for ext in Figure().canvas.get_supported_filetypes())


def parse_error_exit(prog, error):
    """The tools' one-line error: 'prog: error: message' on stderr; returns exit status 2."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def main_reporting_errors(prog, run, args):
    """run(args)'s exit status, or 2 with the one-line error of a ConfigError or a failed write (a full disk, a
    read-only folder: whatever class the writing library raises), no traceback."""
    try:
        return run(args)
    except ConfigError as error:
        return parse_error_exit(prog, error)
    except (OSError, RuntimeError) as error:
        failed = write_error(error, getattr(error, "filename", None))
        if failed is None:
            raise
        reason = " ".join(str(failed.strerror or failed).split())
        return parse_error_exit(prog, f"cannot write {failed.filename or 'an output file'}: {reason}; free space "
                                      f"(or fix the folder's permissions) and run again")


def write_image(path, picture, params=()):
    """cv2.imwrite, whole or not at all (replace_file); a failed write raises the OSError naming path (imwrite
    itself only returns False)."""
    import cv2  # the drawing tools' dependency, not the other tools'
    suffix = os.path.splitext(path)[1] or ".png"
    encoded, data = cv2.imencode(suffix, picture, list(params))
    if not encoded:
        raise ConfigError(f"cannot write {path}: OpenCV cannot encode {suffix} images")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    replace_file(path, data.tobytes())
    return path


def save_figure(fig, path, **options):
    """fig.savefig(path), whole or not at all (replace_file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(path)[1][1:].lower() or "png", **options)
    replace_file(path, buffer.getvalue())
