"""Training losses, selected by name (``--loss_type``), on the transformed target scale.

- ``l1``, ``mse``: plain mean absolute / squared error.
- ``composite_l1``, ``composite_l2``: alpha * L + (1 - alpha) * mean(e² / sigma²), a chi² term weighting each
  error by its measurement uncertainty sigma (a per-sample column, e.g. relative lab error, or the constant
  ``loss_sigma``). With a CONSTANT sigma, ``composite_l2`` is only a rescaled L2,
  (alpha + (1 - alpha) / sigma²) * MSE, i.e. the same optimum as ``mse`` with another effective learning rate;
  it differs from L2 only when sigma varies per sample. (The seed project's composites reduced to plain L1/L2.)
- ``gaussian_nll``: the model predicts mean and log-variance; Gaussian negative log-likelihood.
- ``quantile``: the model predicts several quantiles; pinball loss averaged over them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from socmap.errors import InputError

__all__ = [
    "DEFAULT_QUANTILES",
    "LOSSES",
    "SocLoss",
    "check_loss",
    "n_outputs_for",
    "point_prediction",
]

LOSSES = ("l1", "mse", "composite_l1", "composite_l2", "gaussian_nll", "quantile")
DEFAULT_QUANTILES = (0.05, 0.5, 0.95)


def n_outputs_for(loss_type: str, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> int:
    """How many values the model head must predict for this loss."""
    check_loss(loss_type)
    if loss_type == "gaussian_nll":
        return 2
    if loss_type == "quantile":
        return len(quantiles)
    return 1


def check_loss(loss_type: str) -> None:
    if loss_type not in LOSSES:
        raise InputError(f"loss_type {loss_type!r}: expected one of {', '.join(LOSSES)}")


class SocLoss(nn.Module):
    """The selected loss: ``forward(output [B, K], target [B], sigma [B] or None)``."""

    def __init__(
        self,
        loss_type: str = "mse",
        alpha: float = 0.5,
        sigma: float = 3.0,
        quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    ) -> None:
        super().__init__()
        check_loss(loss_type)
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"loss_alpha {alpha}: expected a value in [0, 1]")
        if sigma <= 0:
            raise InputError(f"loss_sigma {sigma}: expected a positive value")
        if loss_type == "quantile" and (0.5 not in quantiles or any(not 0 < q < 1 for q in quantiles)):
            raise InputError(f"quantiles {quantiles}: expected values in (0, 1) including 0.5")
        self.loss_type, self.alpha, self.sigma = loss_type, alpha, sigma
        self.register_buffer("quantiles", torch.tensor(sorted(quantiles), dtype=torch.float32))

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor | None = None
    ) -> torch.Tensor:
        kind = self.loss_type
        if kind == "gaussian_nll":
            mean, log_var = output[:, 0], output[:, 1].clamp(-10.0, 10.0)
            return F.gaussian_nll_loss(mean, target, log_var.exp(), full=False)
        if kind == "quantile":
            q: torch.Tensor = self.quantiles  # type: ignore[assignment]
            err = target[:, None] - output
            return torch.maximum(q * err, (q - 1.0) * err).mean()
        pred = output[:, 0]
        err = pred - target
        if kind == "l1":
            return err.abs().mean()
        if kind == "mse":
            return (err**2).mean()
        base = err.abs().mean() if kind == "composite_l1" else (err**2).mean()
        s = sigma if sigma is not None else torch.full_like(target, self.sigma)
        chi2 = (err**2 / s.clamp_min(1e-6) ** 2).mean()
        return self.alpha * base + (1.0 - self.alpha) * chi2


def point_prediction(
    output: torch.Tensor, loss_type: str, quantiles: tuple[float, ...] = DEFAULT_QUANTILES
) -> torch.Tensor:
    """The point estimate from a head's output: the mean, or the median quantile."""
    if loss_type == "quantile":
        return output.sort(dim=1).values[:, sorted(quantiles).index(0.5)]
    return output[:, 0]
