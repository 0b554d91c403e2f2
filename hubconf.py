"""torch.hub entry points: every nonlocal block, the classification models and the segmentor.

    block = torch.hub.load("<owner>/<repo>", "snl", inplanes=256, planes=128)        # from GitHub
    model = torch.hub.load("/path/to/clone", "preresnet20_snl", source="local")     # from a clone
    torch.hub.list("/path/to/clone", source="local"); torch.hub.help(..., "cgnl")

    model = torch.hub.load("/path/to/clone", "from_checkpoint", source="local", path="model_best.pth.tar")

The blocks need only torch; the models also import torchvision (imported when a model entry is called).
"""
from lib import NONLOCAL_BLOCKS as _BLOCKS
from lib import build_nonlocal as _build_nonlocal

dependencies = ["torch"]

_BLOCK_DOCS = {
    "snl": "Spectral Nonlocal Block (Zhu et al., ICCV 2021): X + relu(BN(W1 Z + W2 A Z)), normalized symmetric A.",
    "nl": "Nonlocal block (Wang et al., CVPR 2018): X + relu(BN(W2 A Z)), A = softmax(theta phi^T).",
    "a2": "Double-attention block A2 (Chen et al., NeurIPS 2018): X + relu(BN(W2 A Z)), A = relu-dot, no softmax.",
    "ns": "NS block of the SNL paper: X + relu(BN(W2 (I - A) Z)), A = softmax(theta phi^T).",
    "dnl": "Disentangled nonlocal block (Yin et al., ECCV 2020): X + relu(BN(W2 (c + A Z))).",
    "cgnl": "Compact generalized nonlocal block (Yue et al., NeurIPS 2018): Taylor-expanded Gaussian kernel.",
    "cc": "Criss-cross attention (Huang et al., CCNet, ICCV 2019): row and column attention, 2-D only.",
    "cheb": "Chebyshev nonlocal block of order K (default 2) on SNL's affinity; order 1 is SNL.",
    "gsnl": "Generalized SNL of the authors' earlier release: X + BN(W1 Z + W2 A Z + W3 (2A - I) Z).",
    "cayley": "The 'Cayley' unit of the SNL authors' release: X + relu(BN(W1 Z + W2 (W_h Z + L^2 Z))).",
    "arma": "ARMA_1 graph filter (Bianchi et al., TPAMI 2021) with `order` iterations on SNL's affinity.",
}
_BLOCK_ARGS = """

    Args: inplanes (C), planes (C'), and the keywords of snl.build_nonlocal: stage_num, is_sys, is_norm,
    zero_init, affinity_path, dim (1, 2, 3), order, device, dtype. (B, C, *spatial) -> same shape.
"""


def _block_entry(name):
    def entry(inplanes, planes, **kwargs):
        return _build_nonlocal(name, inplanes, planes, **kwargs)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _BLOCK_DOCS.get(name, f"The {name} nonlocal block.") + _BLOCK_ARGS
    return entry


for _name in _BLOCKS:
    globals()[_name] = _block_entry(_name)


def _model(backbone, arch, num_classes, nl_type, pretrained, kwargs):
    from models import build_model  # torchvision is needed from here on
    return build_model(backbone, arch, num_classes, nl_type=nl_type, pretrained=pretrained, **kwargs)


def preresnet20_snl(num_classes=10, nl_type="snl", pretrained=None, **kwargs):
    """CIFAR PreResNet-20 with one nonlocal block (nl_type: any block, default snl) after stage 1's 2nd block.

    Keywords of models.build_model: nl_layer, nl_nums, stage_num, div, is_sys, is_norm, order, device, dtype.
    There are no pretrained weights for PreResNet (pretrained must stay None).
    """
    return _model("preresnet", 20, num_classes, nl_type, pretrained, kwargs)


def preresnet56_snl(num_classes=10, nl_type="snl", pretrained=None, **kwargs):
    """CIFAR PreResNet-56 (Bottleneck [9, 9, 9], 83 layers) with a nonlocal block (nl_type, default snl).

    Keywords as preresnet20_snl.
    """
    return _model("preresnet", 56, num_classes, nl_type, pretrained, kwargs)


def preresnet110_snl(num_classes=10, nl_type="snl", pretrained=None, **kwargs):
    """CIFAR PreResNet-110 (Bottleneck [18, 18, 18], 164 layers) with a nonlocal block (nl_type, default snl).

    Keywords as preresnet20_snl.
    """
    return _model("preresnet", 110, num_classes, nl_type, pretrained, kwargs)


def resnet50_snl(num_classes=1000, nl_type="snl", pretrained=None, **kwargs):
    """ImageNet ResNet-50 with nonlocal blocks (nl_type, default snl; nl_nums 1 or 5), identity-initialized.

    pretrained: True = torchvision's ImageNet weights for the backbone (downloaded), a path = such a file.
    Keywords of models.build_model: nl_nums, stage_num, div, is_sys, is_norm, order, device, dtype.
    """
    return _model("resnet", 50, num_classes, nl_type, pretrained, kwargs)


def resnet101_snl(num_classes=1000, nl_type="snl", pretrained=None, **kwargs):
    """ImageNet ResNet-101 with nonlocal blocks (nl_type, default snl). Keywords as resnet50_snl."""
    return _model("resnet", 101, num_classes, nl_type, pretrained, kwargs)


def resnet152_snl(num_classes=1000, nl_type="snl", pretrained=None, **kwargs):
    """ImageNet ResNet-152 with nonlocal blocks (nl_type, default snl). Keywords as resnet50_snl."""
    return _model("resnet", 152, num_classes, nl_type, pretrained, kwargs)


def resnet3d50_snl(num_classes=400, nl_type="snl", pretrained=None, **kwargs):
    """Video: 3-D ResNet-50 (3D-ResNets layout) with a space-time block in layer3 (B, 3, T, H, W) -> logits.

    pretrained: a path = a 3D-ResNets checkpoint (e.g. resnet-50-kinetics.pth) or a state_dict file.
    Keywords of models.build_model: nl_nums, nl_layer, stage_num, div, is_sys, is_norm, output_relu, device, dtype.
    """
    return _model("resnet3d", 50, num_classes, nl_type, pretrained, kwargs)


def r3d18_snl(num_classes=400, nl_type="snl", pretrained=None, **kwargs):
    """Video: torchvision's r3d-18 with a space-time block (pretrained=True: its Kinetics-400 weights). Keywords
    as resnet3d50_snl."""
    return _model("r3d", 18, num_classes, nl_type, pretrained, kwargs)


def segmentor(arch=50, num_classes=19, nl_type="snl", pretrained=None, **kwargs):
    """Segmentation: dilated ResNet-50/101 (output stride 8) with a nonlocal decode head (nl_type, default snl).

    forward returns {"out": (B, num_classes, H, W)} (+ "aux" in training). pretrained: torchvision ImageNet
    weights for the backbone (True: download; a path). Keywords of models.segmentation.build_segmentor:
    stage_num, div, is_sys, is_norm, aux, device, dtype.
    """
    from models.segmentation import build_segmentor
    return build_segmentor("resnet", arch, num_classes=num_classes, nl_type=nl_type, pretrained=pretrained,
                           **kwargs)


def from_checkpoint(path, **model_flags):
    """A model this repository trained (train_val.py, train_seg.py or train_video.py), rebuilt from the checkpoint
    file at path with its weights, in eval mode (models.checkpoints.rebuild_model).

    The reference's classification checkpoints store no model arguments: pass build_model's keywords for them
    (backbone, arch, nl_type, is_sys, is_norm, ...; num_classes defaults to the checkpoint's classifier size).
    """
    from lib.engine.checkpoint import load_checkpoint
    from models.checkpoints import rebuild_model
    return rebuild_model(load_checkpoint(path), model_flags or None, source=path).eval()
