"""The training loop's fast paths give the same steps as the plain ones: whole-batch loading, direct torch
steps instead of Accelerate's wrappers, and fused Adam (same update up to float rounding)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from socmap.config import TrainConfig
from socmap.losses import SocLoss
from socmap.models import trainer
from socmap.models.networks import RefittedCovLSTM
from socmap.models.schedule import resolve_schedule
from socmap.models.trainer import BatchTensors, EpochSampler, batch_as_is, build_optimisation, train_epoch


def _tensors(n: int = 70) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 5, 5, 2, generator=g), torch.randn(n, generator=g), torch.rand(n, generator=g)


def test_whole_batch_loader_yields_the_per_sample_batches() -> None:
    """Same sampler, same batch size (70 = 4 x 16 + 6: a short last batch): the same values in the same order
    as torch's per-sample loader with its default collate."""
    x, y, s = _tensors()
    per_sample = DataLoader(TensorDataset(x, y, s), batch_size=16, sampler=EpochSampler(70, 5))
    whole = DataLoader(
        BatchTensors(x, y, s), batch_size=16, sampler=EpochSampler(70, 5), collate_fn=batch_as_is
    )
    a, b = list(per_sample), list(whole)
    assert [len(batch[0]) for batch in b] == [16, 16, 16, 16, 6]
    assert len(a) == len(b)
    for got, want in zip(b, a, strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


def _one_epoch(direct: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    monkeypatch.setattr(trainer, "plain_steps", lambda accelerator: direct)
    x, y, s = _tensors()
    tcfg = TrainConfig(grad_clip=0.5, batch_size=16)
    torch.manual_seed(0)
    model = RefittedCovLSTM(3, 8, 8)
    optimizer, _ = build_optimisation(model, tcfg, resolve_schedule(tcfg, 70))
    loader = DataLoader(
        BatchTensors(x, y, s), batch_size=16, sampler=EpochSampler(70, 1), collate_fn=batch_as_is
    )
    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    torch.manual_seed(1)  # dropout between the LSTM layers
    stats = train_epoch(model, loader, optimizer, SocLoss("mse"), accelerator, tcfg, False)
    assert stats["samples"] == 70
    return {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}


def test_direct_torch_steps_equal_accelerates_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """On one process without a gradient scaler, loss.backward() + clip_grad_norm_ + the optimiser's own step
    are exactly what Accelerate's wrappers do: bit-identical weights after an epoch (with clipping)."""
    assert trainer.plain_steps(Accelerator())  # a CPU process takes the direct path
    direct = _one_epoch(True, monkeypatch)
    wrapped = _one_epoch(False, monkeypatch)
    torch.manual_seed(0)
    before = RefittedCovLSTM(3, 8, 8).state_dict()  # the weights both epochs started from
    assert all(not torch.equal(direct[k], before[k]) for k in direct if k.endswith("weight"))  # it trained
    for key in direct:
        assert torch.equal(direct[key], wrapped[key]), key


def test_fused_adam_is_adam_with_weight_decay() -> None:
    """build_optimisation's fused Adam follows torch's reference (for-loop) Adam with the same L2 weight decay
    over 20 steps, up to float rounding; AdamW's decoupled decay would differ by far more."""
    tcfg = TrainConfig(weight_decay=0.05, lr=0.01, batch_size=16)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    reference = torch.nn.Linear(6, 3)
    reference.load_state_dict(model.state_dict())
    fused, _ = build_optimisation(model, tcfg, resolve_schedule(tcfg, 100))
    plain = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.05, foreach=False, fused=False)
    assert fused.defaults["fused"] is True
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        x = torch.randn(16, 6, generator=g)
        for net, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    decoupled = torch.nn.Linear(6, 3)
    adamw = torch.optim.AdamW(decoupled.parameters(), lr=0.01, weight_decay=0.05)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        adamw.zero_grad()
        decoupled(torch.randn(16, 6, generator=g)).square().mean().backward()
        adamw.step()
    assert not torch.allclose(model.weight, decoupled.weight, rtol=1e-5, atol=1e-4)
