"""Output-preserving surgery: widening layers and carrying optimizer state along."""

from netsurgeon.surgery.checkpoint import load_state_dict
from netsurgeon.surgery.init import (
    INIT_STRATEGIES,
    InitStrategy,
    Net2NetInit,
    PaperInit,
    register_init,
)
from netsurgeon.surgery.widening import widen

__all__ = [
    "INIT_STRATEGIES",
    "InitStrategy",
    "Net2NetInit",
    "PaperInit",
    "load_state_dict",
    "register_init",
    "widen",
]
