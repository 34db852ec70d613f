"""Deep models on window stacks [batch, bands, height, width, time].

``RefittedCovLSTM`` is the seed project's CNN-LSTM: a small CNN reads every time step's window, an LSTM reads
the chronological sequence (oldest first), and a fusion head combines the LSTM state with the last step's CNN
features. Networks never move themselves to a device (Accelerate does that); they travel as a state dict plus
the JSON keyword arguments of :func:`build_network` (see :mod:`socmap.models.deep`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from socmap.errors import InputError

if TYPE_CHECKING:
    from socmap.config import TrainConfig
    from socmap.models.base import InputSpec

__all__ = ["NETWORKS", "RefittedCovLSTM", "build_network", "count_parameters", "network_options"]


class RefittedCovLSTM(nn.Module):
    """CNN per time step -> LSTM over time -> fusion head -> ``n_outputs`` values per sample.

    Per step: Conv2d(C->32, 3x3, pad 1)+ReLU+MaxPool2, Conv2d(32->64, 3x3, pad 1)+ReLU+MaxPool2 (4x spatial
    reduction), Linear(->lstm_input_size)+ReLU. LSTM(lstm_input_size -> lstm_hidden_size, num_layers, dropout
    between layers); its last output -> Linear(->64)+ReLU; concatenated with the last step's CNN features ->
    Linear(->32)+ReLU -> Linear(->n_outputs). Works for any window >= 4 and any number of steps >= 1.
    About 307k parameters for 6 bands and 5x5 windows.
    """

    def __init__(
        self,
        num_channels: int,
        lstm_input_size: int = 128,
        lstm_hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.25,
        window_size: int = 5,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if window_size < 4:
            raise InputError(f"window size {window_size}: RefittedCovLSTM needs windows of at least 4 pixels")
        if num_channels < 1:
            raise InputError(f"num_channels {num_channels}: expected at least 1 band")
        reduced = (window_size // 2) // 2
        self.cnn = nn.Sequential(
            nn.Conv2d(num_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * reduced * reduced, lstm_input_size),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(
            lstm_input_size,
            lstm_hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.lstm_head = nn.Sequential(nn.Linear(lstm_hidden_size, 64), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(lstm_input_size + 64, 32), nn.ReLU(), nn.Linear(32, n_outputs))
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, bands, height, width, time] -> [batch, n_outputs]."""
        b, c, h, w, t = x.shape
        steps = x.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)
        features = self.cnn(steps).reshape(b, t, -1)
        sequence, _ = self.lstm(features)
        fused = torch.cat([features[:, -1], self.lstm_head(sequence[:, -1])], dim=1)
        return self.fusion(fused)


NETWORKS: dict[str, type[nn.Module]] = {"cnn_lstm": RefittedCovLSTM}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered network by name (``cnn_lstm``)."""
    if name not in NETWORKS:
        raise InputError(f"network {name!r}: expected one of {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](**kwargs)


def network_options(name: str, train: TrainConfig, inputs: InputSpec, n_outputs: int) -> dict[str, Any]:
    """The JSON-serialisable keyword arguments :func:`build_network` rebuilds network ``name`` from."""
    if name not in NETWORKS:
        raise InputError(f"network {name!r}: expected one of {', '.join(sorted(NETWORKS))}")
    return {
        "num_channels": len(inputs.bands),
        "lstm_input_size": train.lstm_input_size,
        "lstm_hidden_size": train.lstm_hidden_size,
        "num_layers": train.num_layers,
        "dropout": train.dropout,
        "window_size": inputs.window_size,
        "n_outputs": n_outputs,
    }


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters of a network."""
    return sum(p.numel() for p in model.parameters())
