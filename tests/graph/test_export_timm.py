"""timm models that symbolic tracing cannot read (control flow on sizes) trace with export.

``vgg11_bn`` (its ``ConvMlp`` branches on the input size), ``mobilevit_xxs`` (``MobileVitBlock``
unfolds patches by computed sizes) and ``efficientvit_b0`` (``LiteMLA``): symbolic tracing raises
a ``TraceError`` naming the module; the export front end traces each, every group it calls
widenable widens at once exactly (float64, eval), and every other group says why.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import TraceError

timm = pytest.importorskip("timm")

# name: (create_model kwargs, input size, the module symbolic tracing fails in, the floor of the
# widenable share: mobilevit's and efficientvit's attention reshapes by literal sizes block)
MODELS = {
    "vgg11_bn": ({}, 32, "ConvMlp", 1.0),
    "mobilevit_xxs": ({"img_size": 64}, 64, "MobileVitBlock", 0.65),
    "efficientvit_b0": ({}, 64, "LiteMLA", 0.75),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_timm_model_with_control_flow_traces_with_export_and_widens_exactly(name) -> None:
    kwargs, size, failing, floor = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with pytest.raises(TraceError, match=failing):
        netsurgeon.trace(model, (x,))
    graph = netsurgeon.trace(model, (x,), frontend="export", strict=False)
    layers = [
        n
        for n in graph.layers
        if isinstance(graph.module(n), (nn.Linear, nn.Conv2d))
        and not graph.group_of(n).reaches_output
    ]
    widenable = [n for n in layers if graph.group_of(n).widenable]
    assert len(widenable) >= floor * len(layers)
    for group in graph.groups:
        if not group.widenable and not group.reaches_output:
            assert group.reason  # blocked with its reason, never silently
    plan = {g.name: g.granularity for g in graph.groups if g.widenable}
    with torch.no_grad():
        before = model(x)
        netsurgeon.widen(model, plan, graph=graph)
        after = model(x)
    assert ((after - before).abs().max() / before.abs().max()).item() <= 1e-9
    widths = graph.widths()
    for n in widenable:
        grown = graph.handler(n).out_width(graph.module(n))
        assert grown == widths[n] + plan[graph.group_of(n).name]
