"""What the checking tools (gpu_check.py, export_check.py) share: a failure message on one table cell, the table's
last line with the exit status, and blocks / models whose norm layers are randomized so that none is the
identity."""
import torch


def one_line(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def randomized(module, seed=0):
    """Random norm parameters / running statistics and a non-zero CC gamma (defaults would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.7)
    return module


def failure_summary(failed, total, what):
    """Prints the table's last line ("2 of 9 rows failed: a, b"); returns the exit status: 1 if any failed, else 0."""
    print(f"\n{len(failed)} of {total} {what} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
