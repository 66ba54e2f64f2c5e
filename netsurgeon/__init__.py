"""netsurgeon: model surgery for PyTorch on torch.fx.

Trace a model into a layer graph, widen layers without changing what the model computes (optimizer
state carried along), measure where the network is under-expressive with NAGN, and grow it while
it trains.
"""

from netsurgeon._version import __version__
from netsurgeon.errors import (
    DatasetNotFoundError,
    MonitorError,
    NetsurgeonError,
    NetsurgeonTypeError,
    PlanError,
    TraceError,
    UnsupportedModelError,
    WidenError,
)
from netsurgeon.graph import LayerGraph, trace
from netsurgeon.nagn import (
    Grower,
    GrowthConfig,
    GrowthEvent,
    GrowthPlan,
    GrowthPlanner,
    NAGNMonitor,
    plan_growth,
)
from netsurgeon.surgery import InitStrategy, load_state_dict, register_init, widen

__all__ = [
    "DatasetNotFoundError",
    "Grower",
    "GrowthConfig",
    "GrowthEvent",
    "GrowthPlan",
    "GrowthPlanner",
    "InitStrategy",
    "LayerGraph",
    "MonitorError",
    "NAGNMonitor",
    "NetsurgeonError",
    "NetsurgeonTypeError",
    "PlanError",
    "TraceError",
    "UnsupportedModelError",
    "WidenError",
    "__version__",
    "load_state_dict",
    "plan_growth",
    "register_init",
    "trace",
    "widen",
]
