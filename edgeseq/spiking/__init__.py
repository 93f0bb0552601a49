"""The spiking backend: the event-driven simulator, operation counts, energy tables and NIR export.

The LIF neurons the spiking models are built from live with the models (:mod:`edgeseq.models.lif`)
and are re-exported here.
"""

from edgeseq.models.lif import LIF, LIFConfig, atan_spike, heaviside

__all__ = ["LIF", "LIFConfig", "atan_spike", "heaviside"]
