"""Exception hierarchy. Every error names what failed, where, expected vs found, and the fix."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "MonitorError",
    "NetsurgeonError",
    "NetsurgeonTypeError",
    "NetsurgeonWarning",
    "PlanError",
    "TraceError",
    "UnknownLayerError",
    "UnsupportedModelError",
    "WidenError",
]


class NetsurgeonError(Exception):
    """Base class of every error netsurgeon raises on purpose."""


class NetsurgeonTypeError(NetsurgeonError, TypeError):
    """An argument has the wrong type (a plan that is not a mapping, a model that is not a module)."""


class TraceError(NetsurgeonError, RuntimeError):
    """torch.fx could not trace the model (data-dependent control flow, ``len()`` of a proxy, ...)."""


class UnknownLayerError(NetsurgeonError, KeyError):
    """A graph query names no layer or group of the traced model (a read-only lookup failed).

    A ``KeyError``, as for a missing mapping key, but printed as the message itself (the name,
    close matches, the layers there are, or the plan key to use for a follower).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(NetsurgeonError, ValueError):
    """The traced graph contains a structure the dependency analysis does not support."""


class WidenError(NetsurgeonError, ValueError):
    """A widening plan is invalid for this model (unknown layer, output layer, bad count, ...)."""


class PlanError(NetsurgeonError, ValueError):
    """Inputs to the growth planner are inconsistent (mismatched layers, negative widths, ...)."""


class MonitorError(NetsurgeonError, RuntimeError):
    """The NAGN monitor has nothing to report (no gradient reached a layer since the last reset)."""


class ConfigError(NetsurgeonError, ValueError):
    """A configuration field has a value outside what it allows (the message names the field)."""


class NetsurgeonWarning(UserWarning):
    """Something will work, but probably not as intended (e.g. growing without the optimizer)."""
