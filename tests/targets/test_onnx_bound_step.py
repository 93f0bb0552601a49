"""ONNX Runtime's bound CPU decode step (two preallocated output sets, fixed IoBindings).

Oracle: the same artifact run by a second :class:`OnnxRuntime` whose step is today's plain
``session.run`` (bound path switched off), fed the same inputs: the bound path must
give bitwise the same logits and states (same kernels, same thread count), and arrays a
caller keeps must never change afterwards.
"""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from export.artifact import export_artifact
    from targets.testing import tiny_mamba

    out = tmp_path_factory.mktemp("bound_step") / "art"
    export_artifact(tiny_mamba(seed=1, n_layer=2), out, format="onnx", target="host", steps=8, prefill_length=4)
    return out


def _runtimes(artifact):
    from targets.manifest import read_artifact
    from targets.runtimes import OnnxRuntime

    bound = OnnxRuntime(read_artifact(artifact), threads=1)
    plain = OnnxRuntime(read_artifact(artifact), threads=1)
    plain._bound = None  # today's path: session.run with numpy feeds
    assert bound._bound == {}  # CPU provider: the bound path is on
    return bound, plain


def _count_plain_runs(runtime):
    calls = []
    run = runtime.step_session.run
    runtime.step_session.run = lambda *a, **k: calls.append(1) or run(*a, **k)
    return calls


def _tokens(n, batch=1, seed=0):
    return np.random.default_rng(seed).integers(0, 32, size=(n, batch))


def _copy(state):
    return [np.array(s, copy=True) for s in state]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bound_steps_are_bitwise_the_plain_run_and_reuse_two_sets(artifact):
    bound, plain = _runtimes(artifact)
    calls = _count_plain_runs(bound)
    state, ref_state = bound.init_state(1), plain.init_state(1)
    returned = []
    for tok in _tokens(12):
        y, state = bound.step(tok, state)
        ref_y, ref_state = plain.step(tok.copy(), _copy(ref_state))
        assert np.array_equal(y, ref_y) and _same(state, ref_state)
        returned.append([id(a) for a in state])
    assert len(calls) == 2  # a fresh state, then the state fed back (copied into a set) ran plainly; 10 bound
    assert all(returned[t] == returned[t - 2] for t in range(3, 12))  # ping-pong between two fixed sets
    assert returned[-1] != returned[-2]


def test_a_kept_state_logits_and_views_never_change(artifact):
    bound, plain = _runtimes(artifact)
    tokens = _tokens(14, seed=1)
    state, logits, views = bound.init_state(1), [], []
    for t, tok in enumerate(tokens):
        y, state = bound.step(tok, state)
        if t % 2:
            logits.append(y)  # collected, as an evaluation would
        else:
            views.append((y[0, :5], y[0, :5].copy()))  # only a view of the logits kept
        if t == 3:
            kept, kept_copy = state, _copy(state)
    ref_state, ref_logits = plain.init_state(1), []
    for tok in tokens:
        ref_y, ref_state = plain.step(tok, ref_state)
        ref_logits.append(ref_y)
    assert _same(kept, kept_copy)
    assert _same(logits, ref_logits[1::2]) and _same(state, ref_state)
    assert all(np.array_equal(v, c) for v, c in views)
    # branching from the kept state gives what the plain path gives from its copy, and leaves it alone
    y, _ = bound.step(tokens[0], kept)
    assert np.array_equal(y, plain.step(tokens[0], kept_copy)[0]) and _same(kept, kept_copy)


def test_stepping_twice_from_one_state(artifact):
    """The state just returned, used for two continuations: the second must not see the first's writes."""
    bound, plain = _runtimes(artifact)
    state = bound.init_state(1)
    for tok in _tokens(3, seed=2):
        _, state = bound.step(tok, state)
    before = _copy(state)
    a, a_state = bound.step(np.array([5]), state)
    b, b_state = bound.step(np.array([6]), state)
    assert _same(state, before)
    assert np.array_equal(a, plain.step(np.array([5]), _copy(before))[0])
    ref_b, ref_b_state = plain.step(np.array([6]), _copy(before))
    assert np.array_equal(b, ref_b) and _same(b_state, ref_b_state)


def test_alternating_batch_sizes(artifact):
    bound, plain = _runtimes(artifact)
    batches = (1, 2, 3)
    states = {b: bound.init_state(b) for b in batches}
    refs = {b: plain.init_state(b) for b in batches}
    streams = {b: _tokens(9, b, seed=b) for b in batches}
    for t in range(9):
        for b in batches[:2] if t < 5 else batches:  # two shapes bound, then a third evicts one
            y, states[b] = bound.step(streams[b][t], states[b])
            ref_y, refs[b] = plain.step(streams[b][t], refs[b])
            assert y.shape[0] == b and np.array_equal(y, ref_y) and _same(states[b], refs[b])
    assert len(bound._bound) == 2


def test_prefill_then_steps_and_a_foreign_state(artifact):
    bound, plain = _runtimes(artifact)
    calls = _count_plain_runs(bound)
    prompt = _tokens(6, 1, seed=4).T  # [1, 6]: one prefill chunk of 4, two steps
    y, state = bound.prefill(prompt)
    ref_y, ref_state = plain.prefill(prompt)
    assert np.array_equal(y, ref_y) and _same(state, ref_state)
    for tok in _tokens(8, seed=5):
        y, state = bound.step(tok, state)
        ref_y, ref_state = plain.step(tok, ref_state)
        assert np.array_equal(y, ref_y) and _same(state, ref_state)
    assert len(calls) == 2  # the prompt's remainder (two plain steps), then bound
    fresh = bound.init_state(1)
    y, state = bound.step(np.array([7]), fresh)
    ref_y, ref_state = plain.step(np.array([7]), plain.init_state(1))
    assert np.array_equal(y, ref_y) and _same(state, ref_state) and _same(fresh, plain.init_state(1))
    for tok in _tokens(8, seed=7):
        y, state = bound.step(tok, state)
        ref_y, ref_state = plain.step(tok, ref_state)
        assert np.array_equal(y, ref_y) and _same(state, ref_state)
    assert len(calls) == 4  # the fresh state and the one after ran plainly, then bound again


def test_teacher_forced_states_are_not_copied(artifact):
    """A new state every step (as verification's forced steps): plain steps, no sets allocated."""
    bound, plain = _runtimes(artifact)
    rng = np.random.default_rng(8)
    for tok in _tokens(6, seed=8):
        state = [rng.standard_normal(s.shape).astype(s.dtype) for s in bound.init_state(1)]
        y, new = bound.step(tok, state)
        ref_y, ref_new = plain.step(tok, _copy(state))
        assert np.array_equal(y, ref_y) and _same(new, ref_new)
    assert bound._bound == {}


def test_the_torch_adapter_feeds_the_bound_step(artifact):
    """ArtifactModel (edgeseq run, eval) hands the engine its own arrays back: the stream runs bound."""
    import torch

    from targets.runtimes import ArtifactModel

    bound, plain = _runtimes(artifact)
    calls = _count_plain_runs(bound)
    model = ArtifactModel(bound)
    prompt = _tokens(6, 1, seed=9).T  # one prefill chunk of 4, two steps
    y, state = model.prefill_last(torch.from_numpy(prompt), model.init_state(1))
    ref_y, ref_state = plain.prefill(prompt)
    assert torch.equal(y, torch.from_numpy(ref_y)) and _same([s.numpy() for s in state.values()], ref_state)
    for t, tok in enumerate(_tokens(10, seed=10)):
        y, state = model.step(torch.from_numpy(tok), state)
        ref_y, ref_state = plain.step(tok, ref_state)
        assert torch.equal(y, torch.from_numpy(ref_y)) and _same([s.numpy() for s in state.values()], ref_state)
        if t == 4:
            kept, kept_copy = state, {n: s.clone() for n, s in state.items()}
    assert len(calls) == 2  # the prompt's two remainder steps; the ten steps after ran bound
    assert all(torch.equal(kept[n], kept_copy[n]) for n in kept)
