"""Name -> nonlocal block registry and factory."""
from .arma import ARMA
from .cayley import Cayley
from .cc import CCStage
from .cgnl import CGNL
from .cheb import Cheb
from .dnl import DNL
from .errors import ConfigError, check_optional_bool, check_positive_int
from .gsnl import GSNL
from .nl import A2, NL
from .ns import NS
from .snl import SNL
from .stage import NonlocalStage

NONLOCAL_BLOCKS = {"snl": SNL, "nl": NL, "a2": A2, "ns": NS, "dnl": DNL, "cgnl": CGNL, "cc": CCStage,
                   "cheb": Cheb, "gsnl": GSNL, "cayley": Cayley, "arma": ARMA}
ORDER_BLOCKS = ("cheb", "arma")  # the blocks with an `order` (cheb: the Chebyshev order K, arma: iterations T)
DEFAULT_ORDER = 2


def stage_based(nl_type):
    """Whether the block is a NonlocalStage (is_sys / is_norm / affinity_path / filter_response apply)."""
    return issubclass(NONLOCAL_BLOCKS[nl_type], NonlocalStage)


def build_nonlocal(nl_type, inplanes, planes, stage_num=1, is_sys=None, is_norm=None, zero_init=False,
                   affinity_path="auto", dim=2, order=None, output_relu=None, device=None, dtype=None):
    """Build the nonlocal block `nl_type` mapping (B, inplanes, *spatial) to the same shape.

    planes is C', the reduced width (the reference uses int(inplanes / div)). is_sys / is_norm choose the
    affinity of the stage-based blocks (None = the block's default) and do not apply to cgnl and cc;
    stage_num does not apply to cgnl. zero_init makes the block start as the identity (zero output-norm weight;
    cc starts so anyway). affinity_path: see lib/affinity.py. dim: 1 (B, C, L), 2 (B, C, H, W) or
    3 (B, C, T, H, W); cc is 2-D only. order: the order of cheb (K) and arma (iterations T), None = 2;
    an error for the other blocks. output_relu (stage-based blocks only): True = Y = X + relu(BN(.)), False =
    X + BN(.), None = the block's default (False for gsnl, True for the others). device, dtype: where and in
    which dtype the parameters are created (as for torch.nn layers; 'meta' builds without memory, then
    `to_empty` + `reset_parameters()` initializes). docs/blocks.md and docs/spectral.md describe the blocks.
    """
    if nl_type not in NONLOCAL_BLOCKS:
        raise ConfigError(f"unknown nonlocal block {nl_type!r}; valid: {', '.join(NONLOCAL_BLOCKS)}")
    # Each block checks the arguments it takes; here only what a block is not given (a typo must not pass
    # silently because the chosen block ignores the argument) and zero_init, which the blocks take as is.
    if not stage_based(nl_type):
        check_optional_bool("is_sys", is_sys)
        check_optional_bool("is_norm", is_norm)
    if nl_type == "cgnl":
        check_positive_int("stage_num", stage_num)
    if not isinstance(zero_init, bool):
        raise ConfigError(f"zero_init must be True or False, got {zero_init!r}")
    if order is not None and nl_type not in ORDER_BLOCKS:
        raise ConfigError(f"order applies to {' and '.join(ORDER_BLOCKS)} only, not to {nl_type!r} "
                          f"(got order={order!r})")
    if output_relu is not None and not stage_based(nl_type):
        raise ConfigError(f"output_relu applies to the stage-based blocks only, not to {nl_type!r} (got "
                          f"output_relu={output_relu!r}; leave it None)")
    if nl_type == "cgnl":
        return CGNL(inplanes, planes, zero_init=zero_init, dim=dim, device=device, dtype=dtype)
    if nl_type == "cc":
        return CCStage(inplanes, planes, stage_num=stage_num, dim=dim, device=device, dtype=dtype)
    kwargs = dict(stage_num=stage_num, is_sys=is_sys, is_norm=is_norm, zero_init=zero_init,
                  affinity_path=affinity_path, dim=dim, output_relu=output_relu, device=device, dtype=dtype)
    if nl_type in ORDER_BLOCKS:
        kwargs["order"] = DEFAULT_ORDER if order is None else order
    return NONLOCAL_BLOCKS[nl_type](inplanes, planes, **kwargs)
