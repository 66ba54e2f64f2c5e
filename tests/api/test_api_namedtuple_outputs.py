"""Models that return a ``NamedTuple`` trace strictly and widen exactly.

torchvision's ``googlenet(aux_logits=True)`` and ``inception_v3(aux_logits=True)`` return
``GoogLeNetOutputs`` / ``InceptionOutputs`` in train mode, which fx records as a call of the
class. ``trace(strict=True)`` used to refuse it ("not an op netsurgeon knows"). A NamedTuple
constructor packs its fields like a tuple: each keeps its tensor's layout, and every field that
reaches the model output marks its group as an output.

Invariant (float64, dropout off so both forwards draw nothing): after widening every widenable
group, the main logits and each auxiliary logit are those of the unwidened twin, in train mode
(batch statistics) and in eval mode.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torchvision.models import googlenet, inception_v3

import netsurgeon

TOL = {"rtol": 1e-10, "atol": 1e-10}


class _Outputs(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.body(torch.relu(self.stem(x)))
        return _Outputs(logits=self.fc(h.mean((2, 3))), features=h)


def _widen_everything(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    graph = netsurgeon.trace(model, x, strict=True)
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    netsurgeon.widen(model, plan, graph=graph, generator=torch.Generator().manual_seed(0))
    return plan


def test_a_namedtuple_output_marks_each_fields_group_as_an_output():
    model = _TwoOutputs().double()
    graph = netsurgeon.trace(model, torch.randn(2, 3, 6, 6, dtype=torch.float64), strict=True)
    status = {g.name: (g.widenable, g.reaches_output) for g in graph.groups}
    # "body" is returned as `features`: widening it would change an output's shape
    assert status == {"stem": (True, False), "body": (False, True), "fc": (False, True)}
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    twin = copy.deepcopy(model)
    assert _widen_everything(model, x) == {"stem": 2}
    out, ref = model(x), twin(x)
    assert isinstance(out, _Outputs)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)
    torch.testing.assert_close(out.features, ref.features, **TOL)


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _check_twin(model: nn.Module, twin: nn.Module, x: torch.Tensor, outputs: int) -> None:
    for train in (True, False):
        model.train(train), twin.train(train)
        out, ref = model(x), twin(x)
        out = out if isinstance(out, tuple) else (out,)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert len(out) == len(ref) == (outputs if train else 1)
        for a, b in zip(out, ref, strict=True):  # logits, then each auxiliary head's logits
            scale = b.abs().max().item()
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * scale)


def test_googlenet_with_aux_logits_in_train_mode_traces_strictly_and_widens_exactly():
    torch.manual_seed(0)
    model = _no_dropout(googlenet(aux_logits=True, init_weights=True)).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, strict=True)
    aux = [name for name in graph.widenable_layers if name.startswith(("aux1.", "aux2."))]
    assert aux and len(graph.widenable_layers) > 50
    assert {"fc", "aux1.fc2", "aux2.fc2"} <= graph.output_layers
    twin = copy.deepcopy(model)
    _widen_everything(model, x)
    assert model.aux1.fc1.in_features > twin.aux1.fc1.in_features
    _check_twin(model, twin, x, outputs=3)


@pytest.mark.slow
def test_inception_v3_with_aux_logits_in_train_mode_traces_strictly_and_widens_exactly():
    torch.manual_seed(0)
    model = _no_dropout(inception_v3(aux_logits=True, init_weights=True)).double().train()
    x = torch.randn(2, 3, 299, 299, dtype=torch.float64)  # the aux head needs 299 x 299
    graph = netsurgeon.trace(model, x, strict=True)
    assert any(name.startswith("AuxLogits.") for name in graph.widenable_layers)
    assert {"fc", "AuxLogits.fc"} <= graph.output_layers
    twin = copy.deepcopy(model)
    _widen_everything(model, x)
    _check_twin(model, twin, x, outputs=2)


def test_an_eval_mode_trace_that_never_calls_the_aux_heads_blocks_every_group_naming_them():
    """In eval mode googlenet's forward skips ``aux1``/``aux2``: which channels they read is
    unknown, and widening any group they might read would break the next train-mode forward."""
    model = googlenet(aux_logits=True, init_weights=True).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, strict=False)
    assert not graph.widenable_layers
    reasons = {g.reason for g in graph.groups}
    assert all(
        r is not None and "'aux1.conv.conv' (Conv2d)" in r and "model.train()" in r for r in reasons
    )
    with pytest.raises(netsurgeon.UnsupportedModelError, match=r"never calls 'aux1\.conv\.conv'"):
        netsurgeon.trace(model, x, strict=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(netsurgeon.WidenError, match="never calls"):
        netsurgeon.widen(model, {"conv1.conv": 8}, example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()  # the same model traced in train mode widens (see the tests above)
    assert netsurgeon.trace(model, x, strict=True).widenable_layers


def test_a_grower_stepped_after_validation_grows_the_train_only_aux_heads_too():
    """``grower.step`` comes after validation, in eval mode: it traces the training forward."""
    import torch.nn.functional as F

    from netsurgeon.nagn import Grower, GrowthConfig

    torch.manual_seed(0)
    model = _no_dropout(googlenet(aux_logits=True, init_weights=True)).double().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    y = torch.arange(4) % 10
    config = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_step=4)
    grower = Grower(model, optimizer, config, example_inputs=x[:2])
    assert {"aux1.fc1", "aux2.fc2"} <= set(grower.layers)
    event = twin = None
    for _ in range(2):
        model.train()
        logits, aux2, aux1 = model(x)
        loss = F.cross_entropy(logits, y) + 0.3 * (
            F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()  # validation
        twin = copy.deepcopy(model)
        event = grower.step(0.5)
    assert event is not None and not model.training  # its mode is the user's again
    assert model.aux1.conv.conv.in_channels > twin.aux1.conv.conv.in_channels == 512
    _check_twin(model, twin, x, outputs=3)
