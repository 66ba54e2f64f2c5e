"""Integrations with training frameworks; each is an optional extra and imported on demand.

- :mod:`netsurgeon.integrations.lightning`: ``GrowthCallback`` for Lightning's ``Trainer``
  (``pip install netsurgeon[lightning]``).

Nothing here is imported by ``import netsurgeon``.
"""

__all__: list[str] = []
