"""The verification rule for quantized artifacts: error tolerance *and* float-exact teacher-forced steps."""

import torch

from edgeseq.models.mamba import Mamba, MambaConfig
from export.verify import DRIFT_TOLERANCE, EXACT_STEP, MIN_EXACT_STEPS, TOLERANCES, verify_runner


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


class _FlipEvery(_Runner):
    """A runner whose output is off by 1% on every ``k``-th call (rare level flips), else exact."""

    def __init__(self, model, every):
        super().__init__(model)
        self.every, self.calls = every, 0

    def step(self, x, state):
        y, state = super().step(x, state)
        self.calls += 1
        return (y * 1.01 if self.calls % self.every == 0 else y), state


def test_exact_teacher_forced_steps_are_required_for_quantized_artifacts():
    model = Mamba(MambaConfig(d_model=16, n_layer=1, d_state=4, vocab_size=32)).eval()
    rule = dict(steps=16, tolerance=TOLERANCES["quantized"], min_exact_steps=MIN_EXACT_STEPS["quantized"])
    ok = verify_runner(model, _Runner(model), **rule)
    assert ok.passed and ok.argmax_agreement == 1.0 and ok.teacher_forced_exact_fraction == 1.0
    # a rare 1% error (the last of 16 teacher-forced steps: call 31) passes: an int8 level flip
    rare = verify_runner(model, _FlipEvery(model, 31), **rule)
    assert rare.passed and 0.9 <= rare.teacher_forced_exact_fraction < 1.0
    assert EXACT_STEP < rare.teacher_forced_max_rel_error < TOLERANCES["quantized"]
    # the same 1% error at every step is a graph computing another function: refused
    everywhere = verify_runner(model, _FlipEvery(model, 1), **rule)
    assert not everywhere.passed and everywhere.teacher_forced_exact_fraction == 0.0
    assert "teacher-forced" in everywhere.note
    # a broken graph (reversed logits) fails even with an infinite error tolerance
    broken = verify_runner(model, _Runner(model, reverse=True), **{**rule, "tolerance": float("inf")})
    assert not broken.passed


def test_tolerances_stay_tight():
    # float graphs: every error within 1e-4; quantized graphs: their correctness rests on the
    # float-exact teacher-forced steps (the looser bound only rules out errors as large as the signal)
    assert TOLERANCES["float32"] <= 1e-4 and EXACT_STEP <= 1e-4 and MIN_EXACT_STEPS["quantized"] >= 0.9
    assert TOLERANCES["quantized"] <= 1.0


class _WrongState(_Runner):
    """Exact outputs, but the new state is scaled by 2% (a broken state update)."""

    def step(self, x, state):
        y, state = super().step(x, state)
        return y, {k: v * 1.02 for k, v in state.items()}


def test_teacher_forced_steps_check_the_new_state_and_drift_has_its_own_bound():
    model = Mamba(MambaConfig(d_model=16, n_layer=1, d_state=4, vocab_size=32)).eval()
    rule = dict(steps=16, tolerance=TOLERANCES["quantized"], min_exact_steps=MIN_EXACT_STEPS["quantized"],
                drift_tolerance=DRIFT_TOLERANCE["quantized"])
    wrong = verify_runner(model, _WrongState(model), **rule)
    assert not wrong.passed and wrong.teacher_forced_exact_fraction == 0.0
    # an exact runner passes, and the manifest records the drift bound it was held to
    ok = verify_runner(model, _Runner(model), **rule)
    assert ok.passed and ok.drift_tolerance == DRIFT_TOLERANCE["quantized"]
    assert TOLERANCES["quantized"] <= DRIFT_TOLERANCE["quantized"] <= 1.0
