"""Name -> nonlocal block registry and factory."""
from lib.cc import CCStage
from lib.cgnl import CGNL
from lib.dnl import DNL
from lib.errors import ConfigError
from lib.nl import A2, NL
from lib.ns import NS
from lib.snl import SNL

NONLOCAL_BLOCKS = {"snl": SNL, "nl": NL, "a2": A2, "ns": NS, "dnl": DNL, "cgnl": CGNL, "cc": CCStage}


def build_nonlocal(nl_type, inplanes, planes, stage_num=1, is_sys=None, is_norm=None, zero_init=False,
                   affinity_path="auto"):
    """Build the nonlocal block `nl_type` mapping (B, inplanes, H, W) to the same shape.

    planes is C', the reduced width (the reference uses int(inplanes / div)). is_sys / is_norm choose the
    affinity of the stage-based blocks (snl, nl, a2, ns, dnl; None = the block's default) and do not
    apply to cgnl and cc; stage_num does not apply to cgnl. zero_init makes the block start as the
    identity (zero output-norm weight; cc starts so anyway). affinity_path: see lib/affinity.py.
    """
    if nl_type not in NONLOCAL_BLOCKS:
        raise ConfigError(f"unknown nonlocal block {nl_type!r}; valid: {', '.join(NONLOCAL_BLOCKS)}")
    if nl_type == "cgnl":
        return CGNL(inplanes, planes, zero_init=zero_init)
    if nl_type == "cc":
        return CCStage(inplanes, planes, stage_num=stage_num)
    return NONLOCAL_BLOCKS[nl_type](inplanes, planes, stage_num=stage_num, is_sys=is_sys, is_norm=is_norm,
                                    zero_init=zero_init, affinity_path=affinity_path)
