"""Handlers by op family: each file holds one family's module, function and method spellings.

Importing this package registers every handler in :data:`netsurgeon.graph.registry.REGISTRY`.
The base classes of the handlers that own tensors are in :mod:`.base`; timm's layers register
themselves from the tracer when timm is in use (:mod:`.timm`), and torchvision's wrapped functions
by qualified name (:mod:`.torchvision`), so neither package is imported here.

- :mod:`.linear`: ``Conv``, ``ConvTranspose``, ``Linear``, ``Embedding`` (layers);
- :mod:`.norm`: BatchNorm, SyncBatchNorm, FrozenBatchNorm2d, InstanceNorm, GroupNorm
  (followers), the functional norms that block;
- :mod:`.layer_norm`: ``LayerNorm``/``RMSNorm`` and their functions, across the channels (the
  constructions of :mod:`netsurgeon.graph.constructions`);
- :mod:`.elementwise`: activations, dropout, casts, ``PReLU``; joins (``add``, ``mul``,
  ``where``, ``addcmul``);
- :mod:`.spatial`: pooling, interpolation, padding, pixel (un)shuffle, flip, roll;
- :mod:`.reshape`: ``permute``, ``flatten``, ``view``/``reshape``, ``squeeze``, ``expand``;
- :mod:`.unflatten`: ``unflatten``, ``nn.Unflatten``, ``reshape_as``/``view_as``;
- :mod:`.concat`: ``cat``, ``stack``, ``chunk``/``split``, ``getitem``;
- :mod:`.reduce`: reductions, cumulative ops, sorting, ``index_select``, softmax;
- :mod:`.queries`: ``size``, ``shape``, ``numel``, ``dim``, ``.T``;
- :mod:`.attention`: matmul-like mixing, per-head attention;
- :mod:`.heads`: channels cut into attention heads (the cut, the merge, per-head products);
- :mod:`.multihead`: ``nn.MultiheadAttention`` (a layer growing by whole heads);
- :mod:`.transformer`: ``nn.TransformerEncoderLayer`` and friends (traced through their slow
  path, or leaves that block);
- :mod:`.recurrent`: ``RNN``/``LSTM``/``GRU`` and their cells;
- :mod:`.factories`: ``zeros_like`` and friends, ``new_zeros`` and friends;
- :mod:`.containers`: ``NamedTuple`` outputs;
- :mod:`.torchvision`: torchvision's wrapped functions (drop path, Swin's window attention and
  patch merging);
- :mod:`.window_attention`: Swin's window attention (torchvision's, timm's) as one layer grown
  by whole heads with its stream;
- :mod:`.hf`: Hugging Face transformers' ``Conv1D`` (GPT-2), by qualified name.

Files import each other one way only (``torchvision`` and ``timm`` build on the families; a flow
that two spellings share lives in its family's file), never lazily.
"""

from netsurgeon.graph.ops import (  # noqa: F401  (each import registers its handlers)
    attention,
    concat,
    containers,
    elementwise,
    factories,
    hf,
    layer_norm,
    linear,
    multihead,
    norm,
    queries,
    recurrent,
    reduce,
    reshape,
    spatial,
    torchvision,
    transformer,
    unflatten,
    window_attention,
)
