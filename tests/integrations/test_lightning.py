"""``GrowthCallback`` with a real Lightning ``Trainer`` on CPU.

Invariants tested:

* the module grows during ``fit`` when the (forced) rule triggers, from the logged metric;
* training continues with the trainer's own optimizer object, whose state follows the new
  shapes, and its LR scheduler keeps stepping;
* a run resumed from a checkpoint written right after a growth, on a fresh (narrower) module,
  ends bit-identical to the uninterrupted run, with the same growth history.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

from netsurgeon.integrations.lightning import GrowthCallback  # noqa: E402
from netsurgeon.models import vgg  # noqa: E402
from netsurgeon.nagn import GrowthConfig  # noqa: E402

CONFIG = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_growths=2)
EPOCHS = 4  # growths after epochs 2 and 4 (the windows restart after each trigger)


class TinyNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = vgg([[4], [4]], num_classes=3, image_size=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]


class OptimizerProbe(L.Callback):
    """Records which optimizer object each epoch trains with."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.ids.append(id(trainer.optimizers[0]))


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=False)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32, shuffle=False)
    return train, val


def _fit(tmp_path, name: str, ckpt_path=None):
    model, growth, probe = TinyNet(), GrowthCallback("val_acc", CONFIG), OptimizerProbe()
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
        callbacks=[growth, probe, checkpoints],
        default_root_dir=tmp_path / name,
    )
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*The dirpath has changed.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, growth, probe, trainer


def test_callback_grows_with_the_trainers_optimizer_and_resumes_identically(tmp_path):
    start_params = sum(p.numel() for p in TinyNet().parameters())
    model, growth, probe, trainer = _fit(tmp_path, "full")

    # growth happened, twice, from the logged metric
    assert [e.epoch for e in growth.history] == [2, 4]
    assert (
        sum(p.numel() for p in model.parameters()) == growth.history[-1].params_after > start_params
    )
    # the same optimizer object all along, over the grown parameters, with grown state
    opt = trainer.optimizers[0]
    assert probe.ids == [id(opt)] * EPOCHS
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    for p in model.parameters():
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.optimizer is opt and scheduler.last_epoch == EPOCHS
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9**EPOCHS)
    assert not growth.grower.monitor.attached  # teardown leaves no hooks behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, _loaders()[1], verbose=False)
    assert len(growth.grower.accuracies) == EPOCHS  # trainer.validate() is not a growth step

    # resume right after the first growth, on a fresh (narrow) module
    resumed, growth2, probe2, trainer2 = _fit(
        tmp_path, "resumed", tmp_path / "full" / "epoch=1.ckpt"
    )
    assert probe2.ids == [id(trainer2.optimizers[0])] * (EPOCHS - 2)
    assert [e.increments for e in growth2.history] == [e.increments for e in growth.history]
    assert growth2.history[0] == growth.history[0]
    for (name, a), (_, b) in zip(
        model.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    state, state2 = opt.state_dict()["state"], trainer2.optimizers[0].state_dict()["state"]
    for key in state:
        assert torch.equal(state[key]["momentum_buffer"], state2[key]["momentum_buffer"]), key


def test_callback_names_a_missing_metric(tmp_path):
    from netsurgeon.errors import NetsurgeonError

    growth = GrowthCallback("val_accuracy", CONFIG, module="net")
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[growth],
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NetsurgeonError, match="logged: \\['val_acc'\\]"):
            trainer.fit(TinyNet(), *_loaders())
