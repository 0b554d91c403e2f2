"""Checkpoint files: the reference's names, crash-safe writes, finding the newest, reading with clear errors.

A run folder holds one file per finished epoch (only the newest --keep-checkpoints are kept), named as the
reference did: <epoch>-<dataset>-r-<arch>-w-<nl_nums><nl_type>-block.pth.tar, or <dataset>-r-<arch>-<epoch>-base
.pth.tar without blocks (<epoch> 0-based; the file's "epoch" entry counts finished epochs, i.e. <epoch> + 1), and
model_best.pth.tar. A checkpoint written inside an epoch (--save-every, --save-every-minutes, a preemption signal)
is named after the epoch in progress and the iterations done in it: <epoch file name>.iter<I>.pth.tar (only the
newest is kept; the epoch's own file replaces it). Writes go to a temporary file in the same folder, are fsync'ed,
then renamed over the target: a kill at any moment leaves either the old or the new file, never a truncated one,
and a failed write (a full disk) leaves the previous files as they were.
"""
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch

from lib.engine.device_rng import device_rng_entry, restore_device_rng
from lib.engine.distributed import from_main
from lib.engine.errors import WriteFailed, write_error, write_failure
from lib.errors import ConfigError
from models.common import with_output_relu

BEST_NAME = "model_best.pth.tar"
TEMP_SUFFIX = ".tmp"
_BLOCK_NAME = re.compile(r"^(\d+)-.+-r-.+-w-\d+.+-block\.pth\.tar$")
_BASE_NAME = re.compile(r"^.+-r-.+-(\d+)-base\.pth\.tar$")
_MID_NAME = re.compile(r"^(.+)\.iter(\d+)(\.pth\.tar)$")
# mkstemp creates files readable by the owner only; checkpoints get the permissions of any other new file.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def checkpoint_name(epoch_index, dataset, arch, nl_nums, nl_type):
    """The reference's file name for the checkpoint written after 0-based epoch epoch_index."""
    if nl_nums and nl_type:
        return f"{epoch_index}-{dataset}-r-{arch}-w-{nl_nums}{nl_type}-block.pth.tar"
    return f"{dataset}-r-{arch}-{epoch_index}-base.pth.tar"


def _epoch_index(filename):
    match = _BLOCK_NAME.match(filename) or _BASE_NAME.match(filename)
    return int(match.group(1)) if match else None


def save_from_main(ctx, log, run_dir, path, is_best, contents, last_good, prune):
    """Write contents() (built in rank 0 only) atomically to path, after model_best.pth.tar if is_best; then
    prune() older files, only once the new one is complete. Returns path in every process; a failed write leaves
    no partial file and raises WriteFailed (naming last_good(), the last good checkpoint) in every process."""
    def write():
        try:
            atomic_save(contents(), *([os.path.join(run_dir, BEST_NAME)] if is_best else []), path)
        except (OSError, RuntimeError) as error:  # RuntimeError: torch's zip writer (errors.write_error)
            failed = write_error(error, path)
            if failed is None:
                raise
            return None, str(write_failure(failed.filename or path, failed, last_good()))
        try:
            prune()
        except OSError as error:  # the new checkpoint is complete: a file left over is no reason to stop
            log.warn(f"could not remove an old checkpoint ({error})")
        log.info(f"=> saved {path}" + (f" and {BEST_NAME}" if is_best else ""))
        return path, None

    saved, failure = from_main(ctx, write)
    if failure:
        raise WriteFailed(failure if ctx.is_main else f"rank 0: {failure}")
    return saved


def mid_epoch_name(epoch_file_name, iterations):
    """The name of a checkpoint after `iterations` iterations of the epoch whose own file is epoch_file_name."""
    stem = epoch_file_name[:-len(".pth.tar")] if epoch_file_name.endswith(".pth.tar") else epoch_file_name
    return f"{stem}.iter{iterations}.pth.tar"


def mid_epoch_checkpoints(run_dir):
    """[(epoch_index, iterations, path)] of the mid-epoch checkpoints in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        match = _MID_NAME.match(name)
        index = _epoch_index(match.group(1) + match.group(3)) if match else None
        if index is not None:
            found.append((index, int(match.group(2)), os.path.join(run_dir, name)))
    return sorted(found)


def epoch_checkpoints(run_dir):
    """[(epoch_index, path)] of the per-epoch checkpoints in run_dir, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(_epoch_index(name), os.path.join(run_dir, name)) for name in os.listdir(run_dir)]
    return sorted((index, path) for index, path in found if index is not None)


def stored_epoch(path):
    """The finished-epoch count stored in the checkpoint at path, or None if the file cannot be read.

    The file is memory-mapped, so probing a ResNet-50 checkpoint reads little more than its pickled header.
    """
    for options in (dict(mmap=True), {}):  # mmap needs the zip format; files of torch < 1.6 are read in full
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, **options)
        except Exception:  # zip, pickle and EOF errors share no base class; all mean "not usable this way"
            continue
        epoch = loaded.get("epoch") if isinstance(loaded, dict) else None
        try:
            return int(epoch)
        except (TypeError, ValueError):
            return None
    return None


def latest_checkpoint(run_dir):
    """The newest complete checkpoint of run_dir, model_best.pth.tar included (it may be all that is left of a
    run), or None. Files are ordered by (finished epochs, iterations into the next one), so a mid-epoch file
    beats the file of the epoch before it; at equal positions the per-epoch file wins over model_best; unreadable
    files are skipped. Files are probed newest first, and only down to the best's epoch."""
    best = os.path.join(run_dir, BEST_NAME)
    best_epoch = stored_epoch(best) if os.path.isfile(best) else None
    candidates = [((index + 1, 0), path) for index, path in epoch_checkpoints(run_dir)]
    candidates += [((index, iterations), path) for index, iterations, path in mid_epoch_checkpoints(run_dir)]
    for position, path in sorted(candidates, reverse=True):
        if best_epoch is not None and position < (best_epoch, 0):
            break  # model_best is newer than every file left
        if stored_epoch(path) is not None:
            return path
    return best if best_epoch is not None else None


def has_checkpoints(run_dir):
    return (bool(epoch_checkpoints(run_dir)) or bool(mid_epoch_checkpoints(run_dir))
            or os.path.isfile(os.path.join(run_dir, BEST_NAME)))


def atomic_save(obj, *paths):
    """torch.save obj once under every path (in the given order), each always complete: the bytes go to a temp
    file in the same folder, are fsync'ed, then renamed over the target (and the folder fsync'ed).

    Extra paths are hard links to the same file (model_best.pth.tar costs no second write of a ResNet-50's
    200 MB); where links are not supported the file is copied instead.
    """
    folder = os.path.dirname(os.path.abspath(paths[-1]))
    temp_path = _temp_file(folder, paths[-1])
    try:
        _save_to(obj, temp_path, paths[-1])
        for path in paths[:-1]:
            _place_link(temp_path, path, folder)
        os.replace(temp_path, paths[-1])
    except BaseException:
        _remove_quietly(temp_path)
        raise
    _fsync_folder(folder)


class _RecordedWrites:
    """A file for torch.save that keeps the OSError of a failed write: torch's zip writer turns it into a
    RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self):
        self.file.flush()


def _save_to(obj, temp_path, target):
    """torch.save obj into temp_path, fsync'ed; a failed write raises the OSError, naming target."""
    with open(temp_path, "wb") as f:
        recorded = _RecordedWrites(f)
        try:
            torch.save(obj, recorded)
            f.flush()
            os.fsync(f.fileno())
        except (OSError, RuntimeError) as error:
            failed = recorded.error or write_error(error, temp_path)
            if failed is None:
                raise
            raise OSError(failed.errno, failed.strerror, target) from None


def _remove_quietly(path):
    # Cleaning up after a failed write: the failure itself is what gets reported.
    try:
        os.remove(path)
    except OSError:
        pass


def _place_link(source, path, folder):
    """path becomes a hard link to source (a copy where links are not supported), atomically."""
    extra = _temp_file(folder, path)
    os.remove(extra)  # os.link needs a free name
    try:
        try:
            os.link(source, extra)
        except OSError:
            shutil.copyfile(source, extra)
        os.replace(extra, path)
    except BaseException:
        _remove_quietly(extra)  # e.g. a copy that filled the disk: no partial file is left
        raise


def link_checkpoint(source, path):
    """Give the complete checkpoint `source` a second name `path` (atomic; no second copy where links work)."""
    folder = os.path.dirname(os.path.abspath(path))
    _place_link(source, path, folder)
    _fsync_folder(folder)


def _temp_file(folder, path):
    """A new empty file next to path, with the permissions any new file gets (mkstemp's are owner-only)."""
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX)
    if hasattr(os, "fchmod"):  # POSIX only
        os.fchmod(handle, 0o666 & ~_UMASK)
    os.close(handle)
    return temp_path


def _fsync_folder(folder):
    # Makes the rename itself durable; not possible on every platform (e.g. Windows), where it is skipped.
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_stale_temp_files(run_dir):
    """Delete temporary files left by a write that was killed (they never replaced anything); returns their names."""
    if not os.path.isdir(run_dir):
        return []
    stale = [name for name in os.listdir(run_dir) if name.startswith(".") and name.endswith(TEMP_SUFFIX)
             and ".pth.tar." in name]
    for name in stale:
        os.remove(os.path.join(run_dir, name))
    return stale


def prune_epoch_checkpoints(run_dir, keep, own_name):
    """Delete all but the newest `keep` per-epoch checkpoints that this run wrote (own_name(index) == file name).

    Files of other runs that share the folder (another nl_type, the reference's) are never touched.
    """
    if keep <= 0:
        return []
    own = [path for index, path in epoch_checkpoints(run_dir) if os.path.basename(path) == own_name(index)]
    doomed = own[:-keep]
    for path in doomed:
        os.remove(path)
    return doomed


def load_checkpoint(path):
    """The checkpoint dict at path (CPU tensors); a bare state_dict is wrapped as {'state_dict': ...}.

    Raises ConfigError, on one line, for a missing, truncated or otherwise unreadable file.
    """
    if not os.path.isfile(path):
        # Under torchrun every process reads the checkpoint: on several nodes it must be on a shared filesystem.
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and EOF errors share no base class; all mean an unusable file
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"cannot read checkpoint {path}: truncated or corrupt file ({detail})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return {"state_dict": loaded}
    raise ConfigError(f"{path} is not a checkpoint: no 'state_dict' in it")


def capture_rng(device="cpu"):
    """Every RNG a training step on `device` may draw from, in types that torch.load(weights_only=True) reads back
    (an accelerator's own state: lib.engine.device_rng)."""
    keys, position, has_gauss, cached = np.random.get_state()[1:]
    return {"torch": torch.get_rng_state(), **device_rng_entry(device), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def restore_rng(state, device="cpu", warn=print):
    """The states capture_rng saved; warn(text) where the accelerator's cannot be restored here."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    restore_device_rng(state, device, warn)


def model_args_mismatch(saved, current):
    """'nl_type 'nl' (checkpoint) vs 'snl' (this run), ...' for the constructor arguments that differ, or ''.
    A checkpoint from before output_relu was stored is compared with the value its rebuilt network gets."""
    if "output_relu" in current:
        saved = with_output_relu(saved)

    def canonical(value):
        return [canonical(v) for v in value] if isinstance(value, (list, tuple)) else value

    keys = sorted(set(saved) | set(current))
    differ = [f"{key} {canonical(saved.get(key))!r} (checkpoint) vs {canonical(current.get(key))!r} (this run)"
              for key in keys if canonical(saved.get(key)) != canonical(current.get(key))]
    return ", ".join(differ)
