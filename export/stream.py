"""Generation and classification through an artifact runner alone (what ``edgeseq run`` does)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeseq.errors import InputError


def generate(
    runner, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0, tokenizer: Any = None,
    on_text: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prefill ``prompt`` then generate greedily (``temperature=0``) or by sampling; streams text."""
    from edgeseq.generate import TextStream
    from edgeseq.tokenizer import ByteTokenizer

    if max_new_tokens < 0:
        raise InputError("--max-new-tokens must be >= 0")
    if not prompt:  # as `edgeseq generate`: an empty prompt is refused, never replaced silently
        raise InputError("the prompt is empty: give at least one character (e.g. --prompt $'\\n')")
    tokenizer = tokenizer or ByteTokenizer()
    ids = tokenizer.encode(prompt)
    if not ids:
        raise InputError("the prompt encodes to no tokens; give a longer prompt")
    vocab = int(runner.manifest["graphs"]["step"]["outputs"][0]["shape"][-1])
    if any(i < 0 or i >= vocab for i in ids):
        raise InputError(f"the prompt has token ids outside the model's vocabulary (0..{vocab - 1})")
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    logits, state = runner.prefill(torch.tensor([ids], dtype=torch.int64))
    first_token_s = time.perf_counter() - start
    last = logits[:, -1].float()
    new_ids: list[int] = []
    stream = TextStream(tokenizer)  # incremental: constant work per token, not the whole output again
    pieces: list[str] = []
    for _ in range(max_new_tokens):
        token = _pick(last, temperature, gen)
        new_ids.append(token)
        piece = stream.push(token)
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
        last, state = runner.step(torch.tensor([token], dtype=torch.int64), state)
        last = last.float()
    seconds = time.perf_counter() - start
    tail = stream.flush()
    if tail:
        pieces.append(tail)
        if on_text is not None:
            on_text(tail)
    text = "".join(pieces)
    return {
        "prompt": prompt,
        "text": text,
        "tokens": new_ids,
        "new_tokens": len(new_ids),
        "prompt_tokens": len(ids),
        "seconds": seconds,
        "ttft_s": first_token_s,
        "tokens_per_s": len(new_ids) / max(seconds - first_token_s, 1e-9) if new_ids else 0.0,
        "runtime": runner.runtime,
    }


def _pick(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits[0].argmax())
    probs = torch.softmax(logits[0] / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def classify_frames(runner, path: str | None) -> dict[str, Any]:
    """Per-sequence class by the running mean of per-frame scores (the streaming prediction)."""
    if path is None:
        raise InputError("a classifier artifact needs --input FILE.npy holding frames [T, F] or [B, T, F]")
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: file not found")
    try:
        frames = np.load(file, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{file}: not a readable .npy array ({exc})") from None
    if frames.ndim == 2:
        frames = frames[None]
    features = int(runner.manifest["graphs"]["step"]["inputs"][0]["shape"][-1])
    if frames.ndim != 3 or frames.shape[-1] != features:
        raise InputError(f"{file}: expected frames [T, {features}] or [B, T, {features}], got {list(frames.shape)}")
    start = time.perf_counter()
    scores, _ = runner.prefill(torch.from_numpy(frames.astype(np.float32)))
    seconds = time.perf_counter() - start
    mean = scores.float().mean(dim=1)  # [B, C]
    return {
        "predictions": mean.argmax(-1).tolist(),
        "confidence": mean.max(-1).values.tolist(),
        "mean_scores": mean.tolist(),
        "frames": int(frames.shape[1]),
        "seconds": seconds,
        "runtime": runner.runtime,
    }


__all__ = ["classify_frames", "generate"]
