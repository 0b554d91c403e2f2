"""Whether the device runs --amp bf16 natively: a GPU without bf16 tensor cores (before Ampere: V100, T4) runs it
emulated, far slower than fp16, and torch.cuda.is_bf16_supported() says True for it by default."""
import torch


def emulated_bf16_warning(amp, device):
    """The warning for --amp bf16 on a CUDA device that has bf16 only by emulation, else None.

    Asks about the current CUDA device: the entry points have made the run's device current before this
    (lib/engine/distributed.py)."""
    if amp != "bf16" or device.type != "cuda" or not torch.cuda.is_available():
        return None  # (no CUDA: nothing runs there, the run fails on its device first)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return None
    return ("--amp bf16 on a GPU without native bf16 (compute capability < 8.0, e.g. V100, T4) runs emulated, far "
            "slower than fp16: use --amp fp16 (with its GradScaler)")


def warn_emulated_bf16(amp, device, log):
    """log.warn the emulated-bf16 warning where it applies (called by runtime.warn_slow_amp)."""
    message = emulated_bf16_warning(amp, device)
    if message:
        log.warn(message)
