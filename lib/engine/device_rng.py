"""The RNG state of the run's own accelerator, saved and restored across a resume (issue 25, item 6).

Checkpoints used to hold torch.cuda.get_rng_state_all(): one state per visible GPU, restored only where the count
of visible GPUs matched, silently dropped otherwise (a job requeued onto a node with another CUDA_VISIBLE_DEVICES,
a 1-GPU debug resume of a run from an 8-GPU node). Each process draws only on its own device, so that device's
state is the one to keep: saved under DEVICE_KEY, restored onto whichever device the resumed process has, with a
warning wherever a state that was saved cannot be restored (dropout draws then differ from an uninterrupted run).
"""
import torch

DEVICE_KEY = "cuda_device"  # next to capture_rng()'s "torch" / "python" / "numpy"; older checkpoints have "cuda"


def device_rng_entry(device):
    """{DEVICE_KEY: the RNG state of `device`} for a CUDA device, {} otherwise (the CPU's is capture_rng's
    "torch"): merge it into the process's RNG states when checkpointing."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {DEVICE_KEY: torch.cuda.get_rng_state(device)}


def restore_device_rng(state, device, warn):
    """Restore the run's device RNG from one process's saved RNG states (`state`), onto `device`.

    Returns True when a CUDA state was restored. warn(text) is called where the checkpoint held CUDA states that
    this process cannot use; a checkpoint without any (a CPU run's) or a resume on the CPU says nothing: there
    nothing the run drew is lost."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    own = state.get(DEVICE_KEY)
    if own is not None:
        torch.cuda.set_rng_state(own, device)
        return True
    legacy = state.get("cuda") or []
    if not legacy:
        return False
    if len(legacy) == torch.cuda.device_count():  # an older checkpoint, same GPUs visible: as before
        torch.cuda.set_rng_state_all(legacy)
        return True
    warn(f"the checkpoint holds the CUDA RNG states of {len(legacy)} GPU(s) and does not say which one this "
         f"process used; {torch.cuda.device_count()} are visible here: the CUDA RNG (dropout) is not restored, so "
         f"the resumed run does not draw what an uninterrupted run would")
    return False
