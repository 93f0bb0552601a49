"""Evaluation against independent computations.

Oracle for language models: the cross-entropy of one ``forward`` pass over the whole text
(``torch.nn.functional.cross_entropy``), which the chunked-prefill evaluator must reproduce. The
models run in float64, where the only difference is summation order: tolerance 1e-9 relative.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from edgeseq.corpus import TextSplit
from edgeseq.errors import InputError
from edgeseq.evaluate import evaluate, evaluate_classifier, evaluate_lm, lm_nats, truncate_text
from edgeseq.models import build_model
from edgeseq.streaming import running_mean_scores

TEXT = "To be, or not to be: that is the question. Naïve café ☃ — " * 3


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(1)
    return build_model("mamba", d_model=12, n_layer=2, d_state=4).double().eval()


def _oracle_nats(model, ids):
    with torch.no_grad():
        logits = model(ids[None, :-1])[0]
    return F.cross_entropy(logits, ids[1:], reduction="sum").item()


@pytest.mark.parametrize("chunk, n_bytes", [(1, 12), (7, 40), (64, 200), (10_000, 200)])
def test_chunked_prefill_equals_one_forward_pass(tiny_lm, chunk, n_bytes):
    ids = torch.tensor(list(TEXT.encode("utf-8")[:n_bytes]))
    assert lm_nats(tiny_lm, ids, chunk_len=chunk) == pytest.approx(_oracle_nats(tiny_lm, ids), rel=1e-9)


def test_bits_per_byte_definition(tiny_lm):
    result = evaluate_lm(tiny_lm, data=TextSplit("t", "validation", TEXT, "test"), quiet=True)
    ids = torch.tensor(list(TEXT.encode("utf-8")))
    nats = _oracle_nats(tiny_lm, ids)
    n = len(TEXT.encode("utf-8")) - 1  # every byte but the first is predicted
    assert result["tokens"] == n and result["bytes"] == n
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / n, rel=1e-9)
    assert result["loss_nats"] == pytest.approx(nats / n, rel=1e-9)
    assert result["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-9)


class CharTokenizer:
    """A non-byte tokenizer (one id per character) to check that bits are per UTF-8 byte."""

    kind = "chars"
    vocab_size = 256

    def encode(self, text):
        return [ord(c) % 256 for c in text]

    def decode_bytes(self, ids):
        return bytes(ids).decode("latin-1").encode("utf-8")


def test_bits_per_byte_counts_utf8_bytes_for_other_tokenizers(tiny_lm):
    text = "é☃ab"  # 4 characters, 2 + 3 + 1 + 1 = 7 bytes
    result = evaluate_lm(tiny_lm, CharTokenizer(), TextSplit("t", "validation", text, "test"), quiet=True)
    assert result["tokens"] == 3
    assert result["bytes"] == 7 - 2  # the first character (é, 2 bytes) is given, not predicted
    assert result["bits_per_byte"] == pytest.approx(result["loss_nats"] * 3 / math.log(2) / 5)


class Runner:
    """Not a torch module: the interface of an exported artifact's runner."""

    task = "lm"

    def __init__(self, model):
        self.model = model

    def init_state(self, batch):
        return {k: v.numpy() for k, v in self.model.init_state(batch).items()}

    def prefill(self, x, state):
        with torch.no_grad():
            y, state = self.model.prefill(torch.as_tensor(x), {k: torch.as_tensor(v) for k, v in state.items()})
        return y.numpy(), {k: v.numpy() for k, v in state.items()}


def test_runner_objects_evaluate_like_the_model(tiny_lm):
    data = TextSplit("t", "validation", TEXT, "test")
    direct = evaluate(tiny_lm, data=data, quiet=True)
    runner = evaluate(Runner(tiny_lm), data=data, quiet=True, chunk_len=50)
    assert runner["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-9)


def test_max_bytes_and_default_data(tiny_lm):
    result = evaluate(tiny_lm, data="shakespeare", max_bytes=100, quiet=True)
    assert result["bytes"] == 99 and result["dataset"] == "shakespeare"
    assert evaluate(tiny_lm, meta={"dataset": "shakespeare"}, max_bytes=50, quiet=True)["dataset"] == "shakespeare"
    assert truncate_text("aé", 2) == "a"  # never cuts a character in half
    with pytest.raises(InputError, match="at least 2"):
        evaluate_lm(tiny_lm, data=TextSplit("t", "validation", "a", "one char"), quiet=True)


class MeanClassifier:
    """Per-frame scores = frames · W: a classifier whose streaming decision we can compute by hand."""

    task = "classify"

    def __init__(self, weight):
        self.weight = weight  # [F, C]

    def init_state(self, batch):
        return {}

    def prefill(self, frames, state):
        return frames @ self.weight, state


def test_classifier_accuracy_uses_the_running_mean_at_the_last_frame():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(50, 6, 4, generator=gen)
    weight = torch.randn(4, 3, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    expected = (running_mean_scores(frames @ weight)[:, -1].argmax(-1) == labels).float().mean().item()
    # by hand: the running mean at the last frame is the mean over all frames
    assert ((frames.mean(1) @ weight).argmax(-1) == labels).float().mean().item() == pytest.approx(expected)
    result = evaluate_classifier(MeanClassifier(weight), (frames, labels), batch_size=7, quiet=True)
    assert result["accuracy"] == pytest.approx(expected) and result["samples"] == 50
    assert evaluate_classifier(MeanClassifier(weight), (frames, labels), max_samples=10, quiet=True)["samples"] == 10


def test_unknown_task_is_refused():
    class Thing:
        task = "regress"

    with pytest.raises(InputError, match="task"):
        evaluate(Thing(), data="stdlib")
