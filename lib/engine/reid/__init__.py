"""Person re-identification: losses, the retrieval protocol and k-reciprocal re-ranking (docs/reid.md).

Free of the rest of lib.engine on purpose: train_reid.py wires these into the shared run lifecycle.
"""
from lib.engine.reid.evaluation import METRIC_NAMES, evaluate, evaluate_distances, pairwise_distances
from lib.engine.reid.losses import (
                                    CenterLoss,
                                    ReidCriterion,
                                    batch_hard_triplet,
                                    label_smoothing_ce,
                                    weighted_regularized_triplet,
)
from lib.engine.reid.rerank import KReciprocalReranker

__all__ = ["METRIC_NAMES", "evaluate", "evaluate_distances", "pairwise_distances", "CenterLoss", "ReidCriterion",
           "batch_hard_triplet", "label_smoothing_ce", "weighted_regularized_triplet", "KReciprocalReranker"]
