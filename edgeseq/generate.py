"""Text generation that streams through a model's constant-cost ``step``.

The prompt runs once through ``prefill`` (the parallel form, returning the recurrent state);
then each new token costs one ``step``: the state is the only memory, so time and memory per
token stay constant however long the text grows. Sampling is greedy (``temperature=0``) or from
the softmax at a temperature, optionally restricted to the ``top_k`` most likely tokens, with an
explicit seed.

Text is emitted as soon as it is complete: for byte tokenizers an incremental UTF-8 decoder holds
back a partial multi-byte character until its last byte arrives.
"""

from __future__ import annotations

import codecs
import time
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


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any = None,
    prompt: str = "\n",
    max_tokens: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    stop: str | None = None,
    on_text: Callable[[str], None] | None = None,
) -> dict:
    """Continue ``prompt`` by up to ``max_tokens`` tokens through ``step``.

    ``on_text(piece)`` is called with each completed piece of text as it streams. Returns
    ``{"prompt", "text" (the continuation), "tokens" (generated), "prompt_tokens",
    "tokens_per_s"}``. ``stop``: end early once the continuation contains this string.
    """
    if getattr(model, "task", "lm") != "lm":
        raise InputError("generate needs a language model; this model is a classifier")
    if max_tokens < 0:
        raise InputError(f"--max-tokens must be ≥ 0, got {max_tokens}")
    if temperature < 0:
        raise InputError(f"--temperature must be ≥ 0, got {temperature}")
    if not prompt:
        raise InputError("the prompt is empty: give at least one character (e.g. --prompt $'\\n')")
    tokenizer = tokenizer or ByteTokenizer()
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = _model_device(model)
    prompt_ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.int64, device=device)
    if prompt_ids.numel() == 0:
        raise InputError("the prompt encodes to no tokens; give a longer prompt")
    generator = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    logits, state = model.prefill(prompt_ids[None], model.init_state(1))  # [1, P, V]
    logits = torch.as_tensor(logits)[:, -1]  # [1, V]
    stream = _TextStream(tokenizer)
    pieces: list[str] = []
    generated = 0
    step_start = time.perf_counter()
    for i in range(max_tokens):
        token = sample_next(logits, temperature, top_k, generator)  # [1]
        generated += 1
        piece = stream.push(int(token[0]))
        if piece:
            pieces.append(piece)
            if on_text:
                on_text(piece)
        if i == max_tokens - 1 or (stop and stop in "".join(pieces)):
            break
        logits, state = model.step(token.to(device), state)
        logits = torch.as_tensor(logits)
    tail = stream.flush()
    if tail:
        pieces.append(tail)
        if on_text:
            on_text(tail)
    elapsed = time.perf_counter() - step_start
    return {
        "prompt": prompt,
        "text": "".join(pieces),
        "tokens": generated,
        "prompt_tokens": int(prompt_ids.numel()),
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "tokens_per_s": generated / elapsed if elapsed > 0 else None,
        "wall_s": time.perf_counter() - start,
    }


__all__ = ["TextStream", "generate", "sample_next"]
