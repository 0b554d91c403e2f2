"""What a run folder and a resumed checkpoint must satisfy before a run writes anything, for every entry point.

- check_run_folder: a new run (no --resume) never starts over another run's checkpoints or records (a run killed
  before its first checkpoint leaves args.yaml, log_train.txt, ...), and --resume PATH never continues a checkpoint
  from elsewhere into a folder holding another run.
- check_resume_settings: a resumed run is the run it continues: every setting that changes the experiment must
  equal the checkpoint's, unless --allow-changed says to go on knowingly (then the differences are recorded in
  args_resume_<n>.yaml as changed_on_resume). Settings meant to change on a resume (more epochs, workers, print
  and evaluation frequency, checkpoints kept, device, paths, performance switches) are not compared.
  Call it after the model check (another model is not a "changed setting"); it compares the global batch.
- has_work / resume_args_path: a resume with nothing left to do writes no new records, and a resume never
  overwrites an earlier resume's args_resume_<n>.yaml.
- valid_dataset_from_checkpoint: --valid without --dataset evaluates on the checkpoint's dataset.
The checkpoint's task itself is checked with models.tasks.require_task, right after loading it.
"""
import os

from lib.engine.logger import EVENT_FILE_PREFIX
from lib.errors import ConfigError
from models.tasks import require_task

RUN_RECORDS = ("args.yaml", "metrics.jsonl", "log_train.txt")
# Never compared: how and where the run is done, not what it computes. Entry points add their own (e.g. more
# iterations is not allowed for a poly schedule, so train_seg.py does not add "iters").
RESUMABLE = frozenset({
    "workers", "print_freq", "eval_freq", "eval_every", "keep_checkpoints", "device", "data_dir", "output_dir",
    "checkpoints", "resume", "isresume", "resumename", "valid", "check_path", "config", "explicit", "resolved",
    "allow_changed", "changed_on_resume", "download", "num_gpu", "debug", "compile", "channels_last",
    "deterministic", "save_every", "save_every_minutes",  # when to checkpoint does not change the run
    "dist_timeout",
    "pretrained",  # a resumed model's weights come from its checkpoint, never from --pretrained
})
EPOCH_BASED = frozenset({"epochs"})  # train_val.py / train_video.py: more epochs continue the same schedule


def add_allow_changed_flag(group):
    """--allow-changed on a parser (or argument group) of an entry point that resumes."""
    group.add_argument("--allow-changed", "--allow_changed", dest="allow_changed", action="store_true",
                       help="resume even though settings differ from the checkpoint's (listed in the refusal; "
                       "recorded in args_resume_<n>.yaml); without it such a resume is refused")


def run_outputs(run_dir):
    """The records of a run found in run_dir (args.yaml, metrics.jsonl, log_train.txt, event files)."""
    if not os.path.isdir(run_dir):
        return []
    names = sorted(os.listdir(run_dir))
    found = [name for name in RUN_RECORDS if name in names]
    return found + (["tensorboard events"] if any(name.startswith(EVENT_FILE_PREFIX) for name in names) else [])


def check_run_folder(run_dir, resume, has_checkpoints):
    """Refuse, in one line, a run that would overwrite another run's files in run_dir.

    resume: "" (a new run), "auto" (continue this folder: always allowed), or the PATH of a checkpoint to continue;
    has_checkpoints: whether run_dir holds checkpoints (each entry point names its files its own way).
    """
    if resume == "auto":
        return
    records = run_outputs(run_dir)
    if resume:
        if os.path.dirname(os.path.abspath(resume)) == os.path.abspath(run_dir):
            return
        if has_checkpoints:
            raise ConfigError(f"run folder {run_dir} already holds checkpoints, which continuing {resume} there "
                              f"would overwrite: choose a new --checkpoints name")
        if records:
            raise ConfigError(f"run folder {run_dir} holds another run's {', '.join(records)}: choose a new "
                              f"--checkpoints name")
        return
    if has_checkpoints:
        raise ConfigError(f"run folder {run_dir} already holds checkpoints: pass --resume auto to continue that "
                          f"run, or choose a new --checkpoints name")
    if records:  # a run stopped before its first checkpoint: its records are not overwritten either
        raise ConfigError(f"run folder {run_dir} holds the {', '.join(records)} of an earlier run (stopped before "
                          f"its first checkpoint): pass --resume auto to continue it, or choose a new --checkpoints "
                          f"name")


def _shown(value):
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "[]"
    return str(value)


def changed_settings(saved, args, resumable=RESUMABLE):
    """{name: (checkpoint's value, this run's value)} for every setting both know that differs."""
    current = vars(args)
    changed = {}
    for name in sorted(set(saved) & set(current)):
        if name in resumable:
            continue
        old, new = saved[name], current[name]
        if isinstance(old, tuple):
            old = list(old)
        if isinstance(new, tuple):
            new = list(new)
        if old != new:
            changed[name] = (old, new)
    return changed


def _across_process_counts(changed, saved, args, saved_world, world_size):
    """Another number of processes (warned about apart) keeps the run's settings if it keeps the global batch;
    --sync-bn does nothing in a single process."""
    if "batch_size" in changed and saved["batch_size"] * saved_world == args.batch_size * world_size:
        del changed["batch_size"]
    elif "batch_size" in changed and saved_world != world_size:
        changed["batch_size"] = (f"{saved['batch_size']} x {saved_world} processes",
                                 f"{args.batch_size} x {world_size} processes")
    if "sync_bn" in changed and min(saved_world, world_size) == 1:
        del changed["sync_bn"]


def check_resume_settings(checkpoint, path, args, log, resumable=RESUMABLE | EPOCH_BASED, world_size=1):
    """Refuse to resume `checkpoint` (read from `path`) with settings other than its run's, in one line listing
    them, unless args.allow_changed; then warn and keep the list in args.changed_on_resume (written to
    args_resume_<n>.yaml). Checkpoints without stored settings (the reference's) pass. world_size: this run's
    number of processes (the batch size compared is the global one)."""
    saved = checkpoint.get("args")
    if not isinstance(saved, dict):
        return {}
    changed = changed_settings(saved, args, resumable)
    _across_process_counts(changed, saved, args, int(checkpoint.get("world_size") or world_size), world_size)
    if not changed:
        return {}
    listed = ", ".join(f"--{name.replace('_', '-')} {_shown(old)} -> {_shown(new)}"
                       for name, (old, new) in changed.items())
    if not getattr(args, "allow_changed", False):
        raise ConfigError(f"cannot resume {path} with other settings than its run's ({listed}): pass the run's "
                          f"values, or --allow-changed to continue as a changed run (recorded in "
                          f"args_resume_<n>.yaml)")
    log.warn(f"--allow-changed: resuming {path} with other settings than its run's: {listed}")
    args.changed_on_resume = {name: {"was": old, "now": new} for name, (old, new) in changed.items()}
    return changed


def has_work(start, total, pending=None):
    """Whether a (resumed) run has anything to train or evaluate: if not, it writes no args or event file."""
    return start < total or bool(pending)


def resume_args_path(run_dir, start):
    """Where a resumed run records its arguments: args_resume_<start>.yaml, or, when an earlier resume from the same
    point already wrote that file, args_resume_<start>_<k>.yaml (the first free k >= 2): nothing is overwritten."""
    path = os.path.join(run_dir, f"args_resume_{start}.yaml")
    k = 2
    while os.path.exists(path):
        path = os.path.join(run_dir, f"args_resume_{start}_{k}.yaml")
        k += 1
    return path


def valid_dataset_from_checkpoint(args, task):
    """--valid without --dataset: the dataset is the checkpoint's (and the checkpoint must belong to `task`), so
    that the recipe and the data read follow it. Call before the recipe resolves args; returns args."""
    given = getattr(args, "explicit", None)
    if not getattr(args, "valid", False) or not args.check_path or given is None or "dataset" in given:
        return args
    from lib.engine.checkpoint import load_checkpoint  # torch is only needed here
    checkpoint = load_checkpoint(args.check_path)
    require_task(checkpoint, args.check_path, task)
    saved = checkpoint.get("dataset") or (checkpoint.get("args") or {}).get("dataset")
    if saved:
        args.dataset = saved
    return args
