"""The spiking backend: LIF neurons and surrogate gradients (``lif``, exported here), the
event-driven simulation (``engine``), whole-model simulation reports (``report``), operation
counts (``counts``), energy tables (``energy``), NIR export (``nir_export``) and a minimal spiking
model (``mlp``)."""

from edgeseq.spiking.lif import LIF, LIFConfig, atan_spike, heaviside

__all__ = ["LIF", "LIFConfig", "atan_spike", "heaviside"]
