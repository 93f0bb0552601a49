"""Generation through ``step``.

Oracle for greedy decoding: re-running the parallel ``forward`` over the whole text so far and
taking the argmax of the last position (no state involved). float64 models, so ties between
logits cannot flip the argmax through rounding.
"""

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.generate import _TextStream, generate, sample_next
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
