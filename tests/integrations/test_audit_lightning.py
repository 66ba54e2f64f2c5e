"""``GrowthCallback`` steps the Grower once per validation run inside ``fit``, and only then.

The module logs ``val_acc = (epoch + 1) / 10``, so the accuracies the grower saw say which
validation runs stepped it. With ``max_epochs=4`` and ``check_val_every_n_epoch=2`` Lightning
validates after epochs 1 and 3 (0-based), and before training in its sanity check (epoch 0,
``num_sanity_val_steps=2``): the grower must see exactly ``[0.2, 0.4]``: not the sanity check's
0.1, not one value per training epoch, and nothing from a later ``trainer.validate``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

from test_lightning import TinyNet, _loaders  # noqa: E402

from netsurgeon.integrations.lightning import GrowthCallback  # noqa: E402
from netsurgeon.nagn import GrowthConfig  # noqa: E402

NEVER = GrowthConfig(w_acc=1, delta_acc=-1.0, every=1)  # a window gain is never below -100 %


class EpochNet(TinyNet):
    def validation_step(self, batch, batch_idx):
        self.log("val_acc", torch.tensor((self.current_epoch + 1) / 10))


def _trainer(tmp_path, growth: GrowthCallback) -> L.Trainer:
    return L.Trainer(
        max_epochs=4,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[growth],
        default_root_dir=tmp_path,
    )


def test_the_callback_steps_on_each_validation_inside_fit_and_nowhere_else(tmp_path):
    """Mutations killed: the ``sanity_checking`` guard removed; the step moved to
    ``on_train_epoch_end``; the ``TrainerFn.FITTING`` guard removed."""
    growth = GrowthCallback("val_acc", NEVER)
    trainer = _trainer(tmp_path, growth)
    model = EpochNet()
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val)
        assert growth.grower.accuracies == [pytest.approx(0.2), pytest.approx(0.4)]
        assert growth.grower.epoch == 2
        trainer.validate(model, val, verbose=False)
    assert growth.grower.accuracies == [pytest.approx(0.2), pytest.approx(0.4)]
