"""Generation through ``step``.

Oracle for greedy decoding: re-running the parallel ``forward`` over the whole text so far and
taking the argmax of the last position (no state involved). float64 models, so ties between
logits cannot flip the argmax through rounding.
"""

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.generate import _TextStream, decode, generate, sample_next
from edgeseq.models import build_model
from edgeseq.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(2)
    return build_model("mamba", d_model=12, n_layer=2, d_state=4).double().eval()


def _greedy_by_forward(model, prompt_ids, n):
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids):]


def test_greedy_streaming_equals_greedy_by_forward(tiny_lm):
    prompt = "Hello"
    out = generate(tiny_lm, ByteTokenizer(), prompt, 6, temperature=0.0)
    expected = _greedy_by_forward(tiny_lm, list(prompt.encode()), 6)
    assert out["tokens"] == 6 and out["prompt_tokens"] == 5
    assert out["text"] == ByteTokenizer().decode(expected)


def test_sampling_is_seeded(tiny_lm):
    a = generate(tiny_lm, None, "ab", 10, temperature=1.0, seed=7)
    b = generate(tiny_lm, None, "ab", 10, temperature=1.0, seed=7)
    assert a["text"] == b["text"]


def test_top_k_one_is_greedy():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, 1.0, 1, gen).item() == 1
    assert sample_next(logits, 0.0, None, gen).item() == 1
    draws = {sample_next(logits, 1.0, 2, gen).item() for _ in range(50)}
    assert draws <= {1, 3}  # only the two most likely


def test_text_streams_whole_characters():
    stream = _TextStream(ByteTokenizer())
    pieces = [stream.push(b) for b in "é☃x".encode("utf-8")] + [stream.flush()]
    assert "".join(pieces) == "é☃x"
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces[0] == ""  # the first byte of é alone is held back


def test_on_text_receives_the_stream(tiny_lm):
    seen = []
    out = generate(tiny_lm, None, "x", 6, temperature=0.0, on_text=seen.append)
    assert "".join(seen) == out["text"]


def test_bad_generation_requests(tiny_lm):
    with pytest.raises(InputError, match="prompt is empty"):
        generate(tiny_lm, None, "", 3)
    with pytest.raises(InputError, match="temperature"):
        generate(tiny_lm, None, "a", 3, temperature=-1)

    class Classifier:
        task = "classify"

    with pytest.raises(InputError, match="language model"):
        generate(Classifier(), None, "a", 3)


def test_decode_drives_a_bare_step_callable_and_never_wastes_a_step(tiny_lm):
    """The loop alone: a step callable and a state, one step per token after the first."""
    prompt = list(b"Hi there")
    calls = []

    def step(token, state):
        calls.append(int(token[0]))
        return tiny_lm.step(token, state)

    with torch.no_grad():
        logits, state = tiny_lm.prefill(torch.tensor([prompt]))
        tokens = list(decode(step, state, logits[:, -1], 5, temperature=0.0))
    assert tokens == _greedy_by_forward(tiny_lm, prompt, 5)
    assert calls == tokens[:-1]  # the last token is never stepped
    assert list(decode(step, state, logits[:, -1], 0)) == []


class _NumpyRuntime:
    """An artifact runtime's surface without torch modules: numpy logits, a list as the state."""

    runtime = "numpy-test"
    task = "lm"

    def __init__(self, model):
        self.model = model
        self.names = model.state_names()
        self.steps = 0

    def init_state(self, batch):
        return [t.numpy() for t in self.model.init_state(batch).values()]

    def _call(self, fn, x, state):
        y, new = fn(torch.as_tensor(x), dict(zip(self.names, map(torch.from_numpy, state))))
        return y.numpy(), [new[n].numpy() for n in self.names]

    def prefill(self, ids, state):
        return self._call(self.model.prefill, ids, state)

    def step(self, token, state):
        self.steps += 1
        return self._call(self.model.step, token, state)


def test_generate_drives_a_runtime_as_it_drives_the_model(tiny_lm):
    """The same loop, flags and result for a PyTorch model and for an object that is only a
    runtime (what ``edgeseq run`` hands it): identical tokens, greedy and sampled, same keys."""
    runtime = _NumpyRuntime(tiny_lm)
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 5, "seed": 3}):
        ours = generate(tiny_lm, None, "abc", 7, **kwargs)
        theirs = generate(runtime, None, "abc", 7, **kwargs)
        assert theirs["token_ids"] == ours["token_ids"] and len(ours["token_ids"]) == ours["tokens"] == 7
        assert set(theirs) == set(ours) and (theirs["runtime"], ours["runtime"]) == ("numpy-test", "pytorch")
    greedy = generate(runtime, None, "abc", 7, temperature=0.0)
    runtime.steps = 0
    stop = greedy["text"][:3]  # three characters into the greedy continuation
    out = generate(runtime, None, "abc", 50, temperature=0.0, stop=stop)
    assert out["text"].startswith(stop) and out["tokens"] < 7 and runtime.steps == out["tokens"] - 1


def test_prompt_ids_outside_the_declared_vocabulary_are_refused(tiny_lm):
    from edgeseq.tokenizer import ByteTokenizer

    small = build_model("mamba", vocab_size=100, d_model=8, n_layer=1, d_state=2)
    with pytest.raises(InputError, match=r"outside the model's vocabulary \(0..99\)"):
        generate(small, ByteTokenizer(), "é", 2)  # UTF-8 bytes 0xc3 0xa9
    with pytest.raises(InputError, match="top-k"):
        generate(tiny_lm, None, "a", 2, top_k=0)
