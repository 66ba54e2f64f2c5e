"""NAGN: measure where a network is under-expressive and plan how much to grow it.

- :class:`NAGNMonitor` collects the Normalized Activation Gradient Norm per layer during training.
- :func:`plan_growth` / :class:`GrowthPlanner` turn a NAGN profile into width increments
  (:class:`GrowthPlan`), following section 3 of "Where to grow"; :func:`plan_group_growth`
  does it per channel group (residual streams, concatenations), from :mod:`.groups`.
- :class:`PlannerSettings` is the planner's settings as one checked record;
  :class:`TriggerPolicy` the rules of when to grow and when to stop, as a pure policy.
- :class:`Grower` runs both, and ``netsurgeon.widen``, from the user's training loop
  (:class:`GrowthConfig` in, :class:`GrowthEvent` out).
"""

from __future__ import annotations

from netsurgeon.nagn.config import GrowthConfig
from netsurgeon.nagn.events import GrowthEvent
from netsurgeon.nagn.group_planner import plan_group_growth
from netsurgeon.nagn.groups import (
    GroupNAGN,
    backbone_chain,
    combine_nagn,
    group_neighbours,
    group_profile,
)
from netsurgeon.nagn.grower import Grower
from netsurgeon.nagn.monitor import DEFAULT_EVERY, NAGNMonitor
from netsurgeon.nagn.optimizers import KNOWN_OPTIMIZERS
from netsurgeon.nagn.planner import (
    GrowthPlan,
    GrowthPlanner,
    LayerPlan,
    conv_backbone_groups,
    plan_growth,
    relative_contrast,
)
from netsurgeon.nagn.settings import PlannerSettings
from netsurgeon.nagn.trigger import TriggerPolicy, TriggerState
from netsurgeon.nagn.where import WHERE_CRITERIA

__all__ = [
    "DEFAULT_EVERY",
    "KNOWN_OPTIMIZERS",
    "WHERE_CRITERIA",
    "GroupNAGN",
    "Grower",
    "GrowthConfig",
    "GrowthEvent",
    "GrowthPlan",
    "GrowthPlanner",
    "LayerPlan",
    "NAGNMonitor",
    "PlannerSettings",
    "TriggerPolicy",
    "TriggerState",
    "backbone_chain",
    "combine_nagn",
    "conv_backbone_groups",
    "group_neighbours",
    "group_profile",
    "plan_group_growth",
    "plan_growth",
    "relative_contrast",
]
