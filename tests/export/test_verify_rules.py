"""The verification rule for quantized artifacts: error tolerance *and* top-1 agreement."""

import torch

from edgeseq.models.mamba import Mamba, MambaConfig
from export.verify import MIN_ARGMAX_AGREEMENT, TOLERANCES, verify_runner


class _Runner:
    """Runs the model itself, optionally with its logits reversed (a broken graph)."""

    runtime = "test"
    prefill_length = 0

    def __init__(self, model, reverse=False):
        self.model, self.reverse = model, reverse

    def init_state(self, batch):
        return self.model.init_state(batch)

    def step(self, x, state):
        y, state = self.model.step(x, state)
        return (y.flip(-1) if self.reverse else y), state


def test_top1_agreement_is_required_for_quantized_artifacts():
    model = Mamba(MambaConfig(d_model=16, n_layer=1, d_state=4, vocab_size=32)).eval()
    ok = verify_runner(model, _Runner(model), steps=8, tolerance=TOLERANCES["quantized"],
                       min_argmax_agreement=MIN_ARGMAX_AGREEMENT["quantized"])
    assert ok.passed and ok.argmax_agreement == 1.0
    broken = verify_runner(model, _Runner(model, reverse=True), steps=8, tolerance=float("inf"),
                           min_argmax_agreement=MIN_ARGMAX_AGREEMENT["quantized"])
    assert not broken.passed and "top-1 agreement" in broken.note


def test_float_tolerances_stay_tight():
    assert TOLERANCES["float32"] <= 1e-4 and TOLERANCES["quantized"] < 0.2
    torch.manual_seed(0)
