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
    from edgeseq.tokenizer import ByteTokenizer

    if max_new_tokens < 0:
        raise InputError("--max-new-tokens must be >= 0")
    tokenizer = tokenizer or ByteTokenizer()
    ids = tokenizer.encode(prompt or "\n")
    vocab = int(runner.manifest["graphs"]["step"]["outputs"][0]["shape"][-1])
    if any(i >= vocab for i in ids):
        raise InputError(f"the prompt has token ids beyond the model's vocabulary ({vocab})")
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    logits, state = runner.prefill(torch.tensor([ids], dtype=torch.int64))
    first_token_s = time.perf_counter() - start
    last = logits[:, -1].float()
    new_ids: list[int] = []
    emitted = ""
    for _ in range(max_new_tokens):
        token = _pick(last, temperature, gen)
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if on_text is not None and not text.endswith("\ufffd"):
            on_text(text[len(emitted):])
            emitted = text
        last, state = runner.step(torch.tensor([token], dtype=torch.int64), state)
        last = last.float()
    seconds = time.perf_counter() - start
    text = tokenizer.decode(new_ids)
    if on_text is not None and len(text) > len(emitted):
        on_text(text[len(emitted):])
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
