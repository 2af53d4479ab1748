"""``train.select_by: val_sdr`` (checkpoints chosen by the validation tracks' SDR) and
``train.ema_decay`` (a moving average of the weights, validated and kept as the model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import mlflow_runs, tiny_params
from torch.utils.data import DataLoader, TensorDataset

from lightsaft.data.cache import Cache
from lightsaft.data.datasets import ValidDataset
from lightsaft.errors import ConfigError
from lightsaft.evaluation.sdr_variants import mdx_sdr
from lightsaft.spectral import TARGETS, edge_trim
from lightsaft.training.ema import EMA, averaged_weights
from lightsaft.training.lightning_module import LightSAFTModule
from lightsaft.training.losses import LOSSES, Target
from lightsaft.training.val_sdr import SdrTally
from lightsaft.weights.ours import load_weights


def windows(cache, params, where=True) -> ValidDataset:
    m, t = params["model"], params["train"]
    trim = edge_trim(m["hop_length"], m["num_frame"])
    return ValidDataset(Cache(cache), m["num_frame"], t["valid_chunks_per_track"], trim=trim, where=where)


def made_up_estimate(mixture: torch.Tensor, target: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Some estimate of each window, different per target, non-zero in the padding too."""
    gain = 0.5 + 0.1 * condition.view(-1, 1, 1)
    return gain * target + 0.05 * mixture + 0.01


def test_val_sdr_is_the_mdx_sdr_of_the_whole_tracks(synthetic_cache):
    """The tally of the validation windows' cores equals ``mdx_sdr`` of each whole track
    assembled from them (the last core zero-padded in its window), averaged over tracks and
    targets."""
    params = tiny_params(**{"train.valid_chunks_per_track": None})
    dataset = windows(synthetic_cache, params)
    tally = SdrTally(len(dataset.names))
    pieces: dict[tuple[int, int], list] = {}
    for mixture, target, condition, where in DataLoader(dataset, batch_size=7):
        estimate = made_up_estimate(mixture, target, condition)
        tally.add(target, estimate, condition, where)
        for i in range(len(condition)):
            track, start, end = where[i].tolist()
            parts = pieces.setdefault((track, int(condition[i])), [])
            parts.append((target[i, start:end].numpy(), estimate[i, start:end].numpy()))
    cache = Cache(synthetic_cache)
    expected = []
    for (track, k), parts in sorted(pieces.items()):
        reference = np.concatenate([r for r, _ in parts])
        np.testing.assert_array_equal(
            reference, cache.load_audio(dataset.names[track], stems=(TARGETS[k],))[TARGETS[k]]
        )
        expected.append(mdx_sdr(reference, np.concatenate([e for _, e in parts])))
    assert len(expected) == 4 * len(dataset.names)
    print(f"whole-track MDX SDR {np.mean(expected):.6f} dB, tallied {tally.sdr():.6f} dB")
    assert tally.sdr() == pytest.approx(float(np.mean(expected)), abs=1e-9)
    assert abs(tally.sdr() - 10 * math.log10(1 / 0.5**2)) > 0.1  # the padding and the offset count: not a gain's SDR


@pytest.mark.slow  # trains
def test_val_sdr_chooses_the_checkpoint_and_the_average_is_the_model(trained_by_sdr, synthetic_cache):
    out, metrics, params = trained_by_sdr.outputs, trained_by_sdr.metrics, trained_by_sdr.params
    rows = [line.split(",") for line in out.curves.read_text().splitlines()]
    header, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    assert header[-1] == "val_sdr" and len(rows) == 4
    sdr = [float(r["val_sdr"]) for r in rows]
    assert math.isnan(sdr[0]) and math.isnan(sdr[2]) and not math.isnan(sdr[1]) and not math.isnan(sdr[3])
    best = int(np.nanargmax(sdr))
    assert metrics["selected_by"] == "val_sdr" and metrics["selected_epoch"] == best
    assert metrics["best_val_sdr"] == pytest.approx(sdr[best], abs=1e-6)
    assert metrics["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows), abs=1e-6)

    # weights.pt is the moving average kept in the chosen checkpoint, not its trained weights
    checkpoint = torch.load(out.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == best
    model = load_weights(out.weights)
    average = averaged_weights(checkpoint)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, average[key].to(value.dtype), rtol=0, atol=0)
    trained = LightSAFTModule.load_from_checkpoint(out.checkpoint, weights_only=True).model.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in model.state_dict().items() if v.is_floating_point())

    # what was validated at that epoch is the average: its loss and SDR, computed here
    dataset, loss = windows(synthetic_cache, params), LOSSES[params["train"]["val_loss"]]
    tally, total = SdrTally(len(dataset.names)), 0.0
    with torch.no_grad():
        for mixture, target, condition, where in DataLoader(dataset, batch_size=8):
            estimate = model(model.front.stft(mixture), condition)
            total += float(loss(estimate, Target(model.front, wave=target))) * len(condition)
            tally.add(target, model.front.istft(estimate, length=target.shape[1]), condition, where)
    assert total / len(dataset) == pytest.approx(float(rows[best]["val_loss"]), abs=1e-5)
    assert tally.sdr() == pytest.approx(sdr[best], abs=1e-4)

    [run] = mlflow_runs(trained_by_sdr.root, "by-sdr")
    assert run.data.params["train.select_by"] == "val_sdr" and run.data.params["train.ema_decay"] == "0.9"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{trained_by_sdr.root / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "val_sdr")
    assert sorted(round(m.value, 4) for m in history) == sorted(round(s, 4) for s in (sdr[1], sdr[3]))
    assert run.data.metrics["best_val_sdr"] == pytest.approx(sdr[best], abs=1e-6)


class Toy(pl.LightningModule):
    """A model with a BatchNorm (a float buffer and an integer one) trained by plain SGD on fixed data."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.model(x) - x.flip(1)).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(epochs: int, ema: EMA, root, resume=None) -> Toy:
    data = DataLoader(TensorDataset(torch.linspace(-1, 1, 24).view(8, 3)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[ema], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, accelerator="cpu",
    )  # fmt: skip
    module = Toy()
    trainer.fit(module, data, ckpt_path=resume, weights_only=True)
    trainer.save_checkpoint(root / f"epoch{epochs}.ckpt")
    return module


def test_the_average_is_kept_in_the_checkpoint_and_a_resumed_training_continues_it(tmp_path):
    whole = EMA(0.5)
    fit(4, whole, tmp_path)  # 8 steps
    first = EMA(0.5)
    fit(2, first, tmp_path)
    resumed = EMA(0.5)
    module = fit(4, resumed, tmp_path, resume=tmp_path / "epoch2.ckpt")
    assert resumed.updates == whole.updates == 8
    for key, value in whole.average.items():
        torch.testing.assert_close(resumed.average[key], value)
    assert not torch.allclose(whole.average["0.weight"], module.model.state_dict()["0.weight"])  # an average
    # against starting the average over on resume: the test can tell the two apart
    restart = EMA(0.5)
    checkpoint = torch.load(tmp_path / "epoch2.ckpt", weights_only=True)
    del checkpoint["callbacks"]["EMA"]
    torch.save(checkpoint, tmp_path / "no-average.ckpt")
    fit(4, restart, tmp_path, resume=tmp_path / "no-average.ckpt")
    assert not torch.allclose(restart.average["0.weight"], whole.average["0.weight"])


def test_select_by_and_ema_settings_are_checked():
    with pytest.raises(ConfigError, match="train.select_by = 'sdr': must be one of 'val_loss', 'val_sdr'"):
        tiny_params(**{"train.select_by": "sdr"})
    with pytest.raises(ConfigError, match="train.ema_decay = 1: a decay of 1 never moves the average"):
        tiny_params(**{"train.ema_decay": 1})
    with pytest.raises(ConfigError, match="train.val_sdr_every = 3: with trainer.check_val_every_n_epoch = 2"):
        tiny_params(**{"train.select_by": "val_sdr", "train.val_sdr_every": 3, "trainer.check_val_every_n_epoch": 2})
    tiny_params(**{"train.select_by": "val_sdr", "train.val_sdr_every": 4, "trainer.check_val_every_n_epoch": 2})


def _ranks_tally(rank: int, world: int, init: str, items: list, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    tally = SdrTally(2)
    for target, estimate, condition, where in items[rank::world]:
        tally.add(target, estimate, condition, where)
    tally.reduce()
    torch.save(tally.sdr(), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_the_score_is_reduced_across_ranks(tmp_path):
    """Two processes each tally half of the windows; after the reduction both hold the score of all."""
    rng = torch.Generator().manual_seed(0)
    items = []
    for i in range(6):
        target = torch.randn(2, 50, 2, generator=rng)
        estimate = target + 0.3 * torch.randn(2, 50, 2, generator=rng)
        items.append((target, estimate, torch.tensor([i % 4, (i + 1) % 4]), torch.tensor([[i % 2, 5, 45], [1, 0, 30]])))
    alone = SdrTally(2)
    for item in items:
        alone.add(*item)
    torch.multiprocessing.spawn(
        _ranks_tally, args=(2, f"file://{tmp_path / 'rendezvous'}", items, str(tmp_path / "sdr")), nprocs=2
    )
    scores = [torch.load(tmp_path / f"sdr.{rank}") for rank in range(2)]
    print(f"one process {alone.sdr():.6f} dB, two ranks {scores}")
    assert scores == pytest.approx([alone.sdr()] * 2, abs=1e-9)
    halves = [SdrTally(2) for _ in range(2)]
    for rank, half in enumerate(halves):
        for item in items[rank::2]:
            half.add(*item)
    assert all(abs(h.sdr() - alone.sdr()) > 0.01 for h in halves)  # without the reduction, it differs


@pytest.mark.parametrize("study", ["paper_lasaft_large.yaml", "mdx_lightsaft_small.yaml"])
def test_the_official_recipes_choose_by_val_loss_without_averaging(study):
    """The published runs chose by the validation loss and kept no average: their study files too."""
    from helpers import REPO

    from lightsaft.config import defaults, validate
    from lightsaft.schema import set_dotted
    from lightsaft.study.studies import load_study

    [point] = load_study(REPO / "experiments" / study).points()
    params = defaults()
    for key, value in point.overrides.items():
        set_dotted(params, key, value)
    t = validate(params)["train"]
    assert (t["select_by"], t["ema_decay"], t["init_from"]) == ("val_loss", None, None)
