"""netsurgeon: model surgery for PyTorch on torch.fx.

Trace a model into a layer graph, widen layers without changing what the model computes (optimizer
state carried along), measure where the network is under-expressive with NAGN, and grow it while
it trains. Preview what a widening costs (parameters, FLOPs) and cap growth with budgets; grow
under ``DistributedDataParallel`` (:mod:`netsurgeon.distributed`) or from a Lightning callback
(:mod:`netsurgeon.integrations.lightning`, an optional extra).

Log messages go to the ``netsurgeon`` logger (silent unless you configure logging).
"""

import logging

from netsurgeon._version import __version__
from netsurgeon.cost import Budget, CostPreview, fit_to_budget, preview
from netsurgeon.errors import (
    ConfigError,
    MonitorError,
    NetsurgeonError,
    NetsurgeonTypeError,
    NetsurgeonWarning,
    PlanError,
    TraceError,
    UnknownLayerError,
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
    plan_group_growth,
    plan_growth,
)
from netsurgeon.surgery import InitStrategy, load_state_dict, register_init, widen

logging.getLogger("netsurgeon").addHandler(logging.NullHandler())

__all__ = [
    "Budget",
    "ConfigError",
    "CostPreview",
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
    "NetsurgeonWarning",
    "PlanError",
    "TraceError",
    "UnknownLayerError",
    "UnsupportedModelError",
    "WidenError",
    "__version__",
    "fit_to_budget",
    "load_state_dict",
    "plan_group_growth",
    "plan_growth",
    "preview",
    "register_init",
    "trace",
    "widen",
]
