"""``GrowthCallback(mirrors=["ema"])``: an EMA inside the LightningModule grows with the model.

Invariants, with a real ``Trainer`` on CPU and a forced growth rule:

* after each growth the ``AveragedModel`` has the grown module's shapes and keeps averaging;
* a run resumed from the checkpoint written right after the first growth, on a fresh (narrow)
  LightningModule, ends with the EMA bit-identical to the uninterrupted run's;
* a mirror that does not copy the grown module is refused when ``fit`` starts.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from netsurgeon.integrations.lightning import GrowthCallback  # noqa: E402
from netsurgeon.models import vgg  # noqa: E402
from netsurgeon.nagn import GrowthConfig  # noqa: E402

CONFIG = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_growths=2)
EPOCHS = 4


class EmaNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = vgg([[4], [4]], num_classes=3, image_size=8)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update_parameters(self.net)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.ema(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    return (
        DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16),
        DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32),
    )


def _fit(tmp_path, name: str, module: str | None, ckpt_path=None):
    model = EmaNet()
    growth = GrowthCallback("val_acc", CONFIG, module=module, mirrors=["ema"])
    checkpoints = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path / name, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[growth, checkpoints],
        default_root_dir=tmp_path / name,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *_loaders(), ckpt_path=ckpt_path)
    return model, growth


def test_the_callback_grows_an_ema_mirror_and_resumes_it_identically(tmp_path):
    module = "net"
    model, growth = _fit(tmp_path, "full", module)
    assert [e.epoch for e in growth.history] == [2, 4]
    shapes = {n: p.shape for n, p in model.net.named_parameters()}
    assert {n: p.shape for n, p in model.ema.module.named_parameters()} == shapes
    assert int(model.ema.n_averaged) == EPOCHS * 4  # 4 batches an epoch, all averaged
    differs = [
        n
        for n, p in model.ema.module.named_parameters()
        if not torch.equal(p, model.net.get_parameter(n))
    ]
    assert differs  # an average, not a copy

    resumed, growth2 = _fit(tmp_path, "resumed", module, tmp_path / "full" / "epoch=1.ckpt")
    assert [e.increments for e in growth2.history] == [e.increments for e in growth.history]
    for (name, a), (_, b) in zip(
        model.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # net and ema, bit for bit


def test_a_mirror_that_does_not_copy_the_grown_module_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mirrors\[0\] \(VGG\) does not have the model's"):
        _fit(tmp_path, "whole", None)  # the EMA copies self.net, not the LightningModule
