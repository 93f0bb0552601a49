"""A minimal spiking streaming model: frames through Linear → LIF layers to a linear readout.

Small enough to reason about by hand and to export to NIR node for node, it serves the tests, the
benchmarks, the docs examples and the NIR round trips of the spiking backend (``edgeseq.spiking``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from edgeseq.models.lif import LIF
from edgeseq.streaming import IOSpec, ModelConfig, QuantPoint, StateSpec, StreamingModel


@dataclass
class SpikingMLPConfig(ModelConfig):
    family = "spiking-mlp"  # type: ignore[assignment]
    input_size_field = "in_features"
    output_size_field = "n_classes"
    in_features: int = 16
    hidden: tuple[int, ...] = (32, 32)
    n_classes: int = 4
    tau: float = 2.0
    threshold: float = 1.0
    bias: bool = True


class SpikingMLP(StreamingModel):
    """Frames ``[B, T, F]`` -> Linear -> LIF -> (Linear -> LIF)* -> Linear readout ``[B, T, C]``.

    The first layer sees real-valued frames (dense MACs); every later layer sees spikes (ACs).
    State: one membrane per LIF population.
    """

    task = "classify"

    def __init__(self, config: SpikingMLPConfig | None = None):
        super().__init__()
        self.config = config = config or SpikingMLPConfig()
        sizes = (config.in_features, *config.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=config.bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.lifs = nn.ModuleList(LIF(tau=config.tau, threshold=config.threshold) for _ in config.hidden)
        self.head = nn.Linear(sizes[-1], config.n_classes, bias=config.bias)

    def state_spec(self) -> list[StateSpec]:
        return [StateSpec(f"membrane{i}", (n,)) for i, n in enumerate(self.config.hidden)]

    def io_spec(self) -> IOSpec:
        return IOSpec.features(self.config.in_features, self.config.n_classes)

    def quant_points(self) -> list[QuantPoint]:
        points = [QuantPoint("layers.0", "linear")]
        points += [QuantPoint(f"layers.{i}", "linear", input="spike") for i in range(1, len(self.layers))]
        return points + [QuantPoint("head", "linear", input="spike")]

    def forward(self, x: Tensor) -> Tensor:  # [B, T, F] -> [B, T, C]
        h = x
        for layer, lif in zip(self.layers, self.lifs):
            h = lif(layer(h))
        return self.head(h)

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        h = x_t
        new_state = {}
        for i, (layer, lif) in enumerate(zip(self.layers, self.lifs)):
            h, new_state[f"membrane{i}"] = lif.step(layer(h), state[f"membrane{i}"])
        return self.head(h), new_state


__all__ = ["SpikingMLP", "SpikingMLPConfig"]
