"""What a built dataset tells the training script."""
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """name: registry name; num_classes: classifier width; input_size: side of the square network input;
    small_input: True for the CIFAR-style pipeline (models pick their CIFAR stem/backbone from it)."""
    name: str
    num_classes: int
    input_size: int
    small_input: bool
