"""Losses against independent computations; the composite's honest behaviour with constant vs per-sample sigma."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from socmap.errors import InputError
from socmap.losses import SocLoss, n_outputs_for, point_prediction


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(64, 1, generator=g)
    target = torch.randn(64, generator=g)
    sigma = torch.rand(64, generator=g) + 0.2
    return pred, target, sigma


def test_plain_losses() -> None:
    pred, target, _ = data()
    e = pred[:, 0].numpy() - target.numpy()
    assert float(SocLoss("l1")(pred, target)) == pytest.approx(np.abs(e).mean(), rel=1e-6)
    assert float(SocLoss("mse")(pred, target)) == pytest.approx((e**2).mean(), rel=1e-6)


@pytest.mark.parametrize("kind", ["composite_l1", "composite_l2"])
def test_composite_formula(kind: str) -> None:
    pred, target, sigma = data(1)
    e = pred[:, 0].numpy().astype(np.float64) - target.numpy()
    base = np.abs(e).mean() if kind == "composite_l1" else (e**2).mean()
    s = sigma.numpy().astype(np.float64)
    expected = 0.3 * base + 0.7 * np.mean(e**2 / s**2)
    assert float(SocLoss(kind, alpha=0.3)(pred, target, sigma)) == pytest.approx(expected, rel=1e-5)
    const = 0.3 * base + 0.7 * np.mean(e**2 / 2.0**2)
    assert float(SocLoss(kind, alpha=0.3, sigma=2.0)(pred, target)) == pytest.approx(const, rel=1e-5)


def _grad(
    loss: SocLoss, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor | None
) -> torch.Tensor:
    p = pred.clone().requires_grad_(True)
    loss(p, target, sigma).backward()
    assert p.grad is not None
    return p.grad[:, 0]


def test_constant_sigma_composite_l2_is_a_rescaled_l2() -> None:
    pred, target, _ = data(2)
    g_mse = _grad(SocLoss("mse"), pred, target, None)
    g_comp = _grad(SocLoss("composite_l2", alpha=0.5, sigma=3.0), pred, target, None)
    factor = 0.5 + 0.5 / 9.0
    torch.testing.assert_close(g_comp, factor * g_mse)


def test_per_sample_sigma_changes_the_gradient_direction() -> None:
    pred, target, sigma = data(3)
    g_mse = _grad(SocLoss("mse"), pred, target, None)
    g_comp = _grad(SocLoss("composite_l2", alpha=0.5), pred, target, sigma)
    cos = torch.nn.functional.cosine_similarity(g_mse, g_comp, dim=0)
    assert cos < 0.99  # not parallel: the per-sample weighting changes what is learned
    ratio = g_comp / g_mse
    assert float(ratio.std()) > 0.1


def test_gaussian_nll_and_pinball() -> None:
    g = torch.Generator().manual_seed(4)
    out = torch.randn(50, 2, generator=g)
    target = torch.randn(50, generator=g)
    mean, log_var = out[:, 0].double().numpy(), out[:, 1].double().numpy()
    y = target.double().numpy()
    expected = np.mean(0.5 * (log_var + (y - mean) ** 2 / np.exp(log_var)))
    assert float(SocLoss("gaussian_nll")(out, target)) == pytest.approx(expected, rel=1e-5)

    q = (0.05, 0.5, 0.95)
    out_q = torch.randn(50, 3, generator=g)
    e = y[:, None] - out_q.double().numpy()
    qs = np.array(q)
    pinball = np.mean(np.maximum(qs * e, (qs - 1) * e))
    assert float(SocLoss("quantile", quantiles=q)(out_q, target)) == pytest.approx(pinball, rel=1e-5)
    assert (
        n_outputs_for("quantile", q) == 3 and n_outputs_for("gaussian_nll") == 2 and n_outputs_for("mse") == 1
    )
    med = point_prediction(out_q, "quantile", q)
    torch.testing.assert_close(med, out_q.sort(dim=1).values[:, 1])


def test_invalid_arguments() -> None:
    with pytest.raises(InputError, match="loss_type 'huber': expected one of l1, mse, composite_l1"):
        SocLoss("huber")
    with pytest.raises(InputError, match="loss_alpha 2: expected a value in"):
        SocLoss("composite_l1", alpha=2)
    with pytest.raises(InputError, match=r"including 0\.5"):
        SocLoss("quantile", quantiles=(0.1, 0.9))
