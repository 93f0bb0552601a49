"""The spiking backend: LIF neurons re-exported from the models (``edgeseq.models.lif``), the
event-driven simulation (``engine``), whole-model simulation reports (``report``), operation
counts (``counts``), energy tables (``energy``), NIR export (``nir_export``) and a minimal spiking
model (``mlp``)."""

from edgeseq.models.lif import LIF, LIFConfig, atan_spike, heaviside

__all__ = ["LIF", "LIFConfig", "atan_spike", "heaviside"]
