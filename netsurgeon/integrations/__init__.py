"""Integrations with training frameworks; each is an optional extra and imported on demand.

- :mod:`netsurgeon.integrations.lightning`: ``GrowthCallback`` for Lightning's ``Trainer``
  (``pip install netsurgeon[lightning]``);
- :mod:`netsurgeon.integrations.hf`: ``sync_config`` keeps a Hugging Face model's config in step
  with its widths, so ``save_pretrained``/``from_pretrained`` round-trip a grown model
  (``pip install netsurgeon[hf]`` to build the models; transformers is never imported).

Nothing here is imported by ``import netsurgeon``.
"""

__all__: list[str] = []
