"""Text generation that streams through a model's constant-cost ``step``: the one decode loop
behind ``edgeseq generate`` (a PyTorch model) and ``edgeseq run`` (an exported artifact).

The prompt runs once through ``prefill`` (the parallel form, returning the recurrent state);
then each new token costs one ``step``: the state is the only memory, so time and memory per
token stay constant however long the text grows. Sampling is greedy (``temperature=0``) or from
the softmax at a temperature, optionally restricted to the ``top_k`` most likely tokens, with an
explicit seed.

Anything with the streaming surface drives it: ``prefill(ids [1, P], state) -> (logits [1, P, V],
state)``, ``step(token [1], state) -> (logits [1, V], state)`` and ``init_state(1)`` — a
:class:`~edgeseq.streaming.StreamingModel`, or an artifact runtime with a torch-tensor surface.
:func:`decode` is the loop itself over a bare ``step`` callable and a state.

Text is emitted as soon as it is complete: for byte tokenizers an incremental UTF-8 decoder holds
back a partial multi-byte character until its last byte arrives.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import Tensor

from edgeseq.errors import InputError
from edgeseq.tokenizer import ByteTokenizer


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> Tensor:
    """Next token ids ``[B]`` from logits ``[B, V]``: greedy at temperature 0, else sampled."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


class TextStream:
    """Turns generated token ids into text pieces as soon as they are complete, in constant work
    per token: bytes through an incremental UTF-8 decoder; other tokenizers decode only a short
    window (the ids since the last emitted piece, plus the token before them for context), never
    the whole output again."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.is_bytes = getattr(tokenizer, "kind", "bytes") == "bytes"
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were emitted already and give the window its context
        self.read = 0

    def push(self, token: int) -> str:
        if self.is_bytes:
            return self.decoder.decode(self.tokenizer.decode_bytes([token]))
        self.ids.append(token)
        done = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):  # an incomplete character: wait
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        if self.is_bytes:
            return self.decoder.decode(b"", final=True)
        done = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


_TextStream = TextStream  # the earlier name


# the defaults of `edgeseq generate` and `edgeseq run` (one set, one loop)
DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_TEMPERATURE = 0.8

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def decode(
    step: StepFn,
    state: Any,
    logits: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids, one ``step`` per token after the first.

    ``logits`` ``[1, V]`` are the scores for the first new token (the last prefill position);
    ``step(token [1] int64, state) -> (logits [1, V], state)`` is the model's step, any object's.
    A token is stepped only when the next one is asked for, so stopping early (closing the
    iterator, or breaking out of a loop over it) costs no wasted step.
    """
    generator = generator or torch.Generator().manual_seed(0)
    logits = torch.as_tensor(logits)
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)  # [1]
        yield int(token[0])
        if i == max_new_tokens - 1:
            return
        logits, state = step(token.to(device), state)
        logits = torch.as_tensor(logits)


def _io_spec(model: Any):
    return model.io_spec() if callable(getattr(model, "io_spec", None)) else None


def _check_generation_request(model: Any, max_new_tokens: int, temperature: float, top_k: int | None,
                              prompt: str) -> None:
    io = _io_spec(model)
    is_lm = io.input_kind == "tokens" if io is not None else getattr(model, "task", "lm") == "lm"
    if not is_lm:
        raise InputError("generate needs a language model; this model is a classifier")
    if max_new_tokens < 0:
        raise InputError(f"--max-new-tokens must be ≥ 0, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"--temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be ≥ 1, got {top_k}")
    if not prompt:
        raise InputError("the prompt is empty: give at least one character (e.g. --prompt $'\\n')")


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any = None,
    prompt: str = "\n",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    seed: int = 0,
    stop: str | None = None,
    on_text: Callable[[str], None] | None = None,
) -> dict:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens through ``model.step``.

    ``model``: a streaming model or an artifact runtime (see the module docs). ``on_text(piece)``
    is called with each completed piece of text as it streams; ``stop`` ends early once the
    continuation contains this string. Returns ``{"prompt", "text" (the continuation),
    "token_ids", "tokens" (how many were generated), "prompt_tokens", "temperature", "top_k",
    "seed", "runtime", "ttft_s" (prompt in, first token out), "tokens_per_s" (after the first
    token), "wall_s"}``.
    """
    _check_generation_request(model, max_new_tokens, temperature, top_k, prompt)
    tokenizer = tokenizer or ByteTokenizer()
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = _model_device(model)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise InputError("the prompt encodes to no tokens; give a longer prompt")
    io = _io_spec(model)
    if io is not None and not all(0 <= i < io.input_size for i in ids):
        raise InputError(f"the prompt has token ids outside the model's vocabulary (0..{io.input_size - 1})")
    prompt_ids = torch.tensor([ids], dtype=torch.int64, device=device)
    generator = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    state = model.init_state(1) if callable(getattr(model, "init_state", None)) else None
    if callable(getattr(model, "prefill_last", None)):  # an artifact: the LM head on the last position only
        logits, state = model.prefill_last(prompt_ids, state)
        logits = torch.as_tensor(logits)  # [1, V]
    else:
        logits, state = model.prefill(prompt_ids, state)  # [1, P, V]
        logits = torch.as_tensor(logits)[:, -1]  # [1, V]
    stream = TextStream(tokenizer)
    pieces: list[str] = []
    token_ids: list[int] = []
    ttft = None
    first_at = time.perf_counter()
    tokens = decode(model.step, state, logits, max_new_tokens, temperature=temperature, top_k=top_k,
                    generator=generator, device=device)
    for token in tokens:
        if ttft is None:
            first_at = time.perf_counter()
            ttft = first_at - start
        token_ids.append(token)
        piece = stream.push(token)
        if piece:
            pieces.append(piece)
            if on_text:
                on_text(piece)
        if stop and stop in "".join(pieces):
            tokens.close()
            break
    tail = stream.flush()
    if tail:
        pieces.append(tail)
        if on_text:
            on_text(tail)
    end = time.perf_counter()
    after_first = end - first_at
    return {
        "prompt": prompt,
        "text": "".join(pieces),
        "token_ids": token_ids,
        "tokens": len(token_ids),
        "prompt_tokens": len(ids),
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "runtime": getattr(model, "runtime", "pytorch"),
        "ttft_s": ttft,
        "tokens_per_s": (len(token_ids) - 1) / after_first if len(token_ids) > 1 and after_first > 0 else None,
        "wall_s": end - start,
    }


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_TEMPERATURE", "TextStream", "decode", "generate", "sample_next"]
