"""Query-to-gallery distances of re-ID features (docs/reid.md, "Evaluation")."""
import torch
import torch.nn.functional as F

from lib.errors import ConfigError

DISTANCES = ("euclidean", "cosine")


def pairwise_distances(qf: torch.Tensor, gf: torch.Tensor, distance: str = "euclidean",
                       normalize: bool = True) -> torch.Tensor:
    """(len(qf), len(gf)) distances in float32 (float64 kept). euclidean: squared L2 distance (same ranking as
    the L2 distance, cheaper); cosine: 1 - cosine similarity. normalize: L2-normalize the features first (then the
    two give the same ranking: |q - g|^2 = 2 - 2 cos)."""
    if distance not in DISTANCES:
        raise ConfigError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if qf.dtype != torch.float64:
        qf, gf = qf.float(), gf.float()
    if normalize or distance == "cosine":
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    if distance == "cosine":
        return 1 - qf @ gf.t()
    squares = (qf * qf).sum(1, keepdim=True) + (gf * gf).sum(1)[None]
    return (squares - 2 * qf @ gf.t()).clamp_min_(0)
