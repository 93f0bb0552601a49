"""The former home of the spiking simulation, split into three modules:

* :mod:`edgeseq.spiking.engine` — the event-driven simulation (``Simulator``, ``simulate``);
* :mod:`edgeseq.spiking.mlp` — the minimal spiking model (``SpikingMLP``);
* :mod:`edgeseq.spiking.report` — whole-model reports (``simulation_data``, ``simulation_report``).

Kept only until the last caller (``edgeseq.report``) imports from those modules; new code imports
them directly.
"""

from edgeseq.spiking.engine import *  # noqa: F401,F403
from edgeseq.spiking.engine import __all__ as _engine_all
from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig  # noqa: F401
from edgeseq.spiking.report import SimulationData, nir_check, simulation_data, simulation_report  # noqa: F401

__all__ = [*_engine_all, "SpikingMLP", "SpikingMLPConfig", "SimulationData", "nir_check", "simulation_data",
           "simulation_report"]
