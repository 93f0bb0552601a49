"""The spiking backend: LIF neurons and surrogate gradients (here), the event-driven simulator,
operation counts, energy tables and NIR export (added beside them)."""

from edgeseq.spiking.lif import LIF, LIFConfig, atan_spike, heaviside

__all__ = ["LIF", "LIFConfig", "atan_spike", "heaviside"]
