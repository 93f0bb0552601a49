"""Evaluation of streaming models: bits per byte for language models, accuracy for classifiers.

Language models are evaluated over one continuous stream: the text is cut into chunks that run
through ``model.prefill(chunk, state)`` with the state carried from chunk to chunk, so the result
equals one parallel pass over the whole text (exact for long text) while memory stays bounded by
the chunk length. Every token but the first is predicted from all tokens before it.

* ``loss_nats`` — mean cross-entropy per predicted token (natural log);
* ``perplexity`` — ``exp(loss_nats)`` (per token);
* ``bits_per_byte`` — total nats ÷ ln 2 ÷ the number of UTF-8 bytes of the predicted text, so
  models with different tokenizers compare on the same scale (for byte tokenizers it is the
  bits per character of the usual "BPC" tables).

Classifiers predict, for each sample, the argmax of the running mean of their per-frame scores
at the last frame (``edgeseq.streaming.running_mean_scores``), exactly what a streaming
deployment outputs after the last frame.

``evaluate`` needs only ``task``, ``init_state(batch)`` and ``prefill(x, state)`` on the model, so
it also runs exported artifacts and quantized models through their own runtimes.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseq.corpus import TextSplit, encode_text, load_split, require_text
from edgeseq.errors import EdgeseqError, InputError
from edgeseq.streaming import running_mean_scores
from edgeseq.tokenizer import ByteTokenizer

DEFAULT_CHUNK = 512
DEFAULT_BATCH = 64


def _progress(total: int, unit: str, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _as_tensor(y: Any) -> Tensor:
    return y if isinstance(y, Tensor) else torch.as_tensor(y)


def model_task(model: Any) -> str:
    task = getattr(model, "task", None)
    if task not in ("lm", "classify"):
        raise InputError(f"cannot evaluate {type(model).__name__}: its task is {task!r}, expected 'lm' or 'classify'")
    return task


def truncate_text(text: str, max_bytes: int | None) -> str:
    """The longest prefix of ``text`` with at most ``max_bytes`` UTF-8 bytes."""
    if max_bytes is None:
        return text
    if max_bytes < 2:
        raise InputError(f"--max-bytes must be at least 2, got {max_bytes}")
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


# --------------------------------------------------------------------------------------------
# language models
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def lm_nats(model: Any, ids: Tensor, chunk_len: int = DEFAULT_CHUNK, quiet: bool = True) -> float:
    """Total next-token cross-entropy (nats, float64 sum) of ids ``[N]`` via chunked prefill."""
    if ids.numel() < 2:
        raise InputError(f"the text holds {ids.numel()} token(s); need at least 2 to evaluate")
    if chunk_len < 1:
        raise InputError(f"chunk length must be positive, got {chunk_len}")
    device = _model_device(model)
    ids = ids.to(device)
    n_predicted = ids.numel() - 1
    state = model.init_state(1)
    total = torch.zeros((), dtype=torch.float64)
    with _progress(n_predicted, "tok", "eval", quiet) as bar:
        for start in range(0, n_predicted, chunk_len):
            inputs = ids[start : min(start + chunk_len, n_predicted)]  # [L]
            targets = ids[start + 1 : start + 1 + inputs.numel()]  # [L]
            logits, state = model.prefill(inputs[None], state)  # [1, L, V]
            logits = _as_tensor(logits).to(device)[0]
            if not logits.is_floating_point() or logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()  # the loss in at least float32, in the model's dtype otherwise
            total += F.cross_entropy(logits, targets, reduction="sum").double().cpu()
            bar.update(inputs.numel())
    return float(total)


def evaluate_lm(
    model: Any,
    tokenizer: Any = None,
    data: str | TextSplit = "stdlib",
    split: str = "validation",
    max_bytes: int | None = None,
    chunk_len: int = DEFAULT_CHUNK,
    quiet: bool = False,
) -> dict:
    """Bits per byte, loss and perplexity of a language model on a text split (see module docs)."""
    tokenizer = tokenizer or ByteTokenizer()
    text_split = data if isinstance(data, TextSplit) else load_split(data, split)
    text = truncate_text(require_text(text_split).text, max_bytes)
    ids = encode_text(tokenizer, text)
    if ids.numel() < 2:
        raise InputError(f"{text_split.source}: the text holds {ids.numel()} token(s); need at least 2")
    nats = lm_nats(model, ids, chunk_len=chunk_len, quiet=quiet)
    if not math.isfinite(nats):
        raise EdgeseqError(f"the model's loss on {text_split.source} is not finite ({nats}): its outputs overflow to "
                           "NaN/Inf (check the weights' magnitudes); a non-finite metric is never reported")
    n_tokens = ids.numel() - 1
    # bytes predicted: all bytes but those of the first token (given, never predicted)
    n_bytes = len(text.encode("utf-8")) - len(tokenizer.decode_bytes([int(ids[0])]))
    n_bytes = max(n_bytes, 1)
    loss = nats / n_tokens
    return {
        "task": "lm",
        "dataset": text_split.dataset,
        "split": text_split.split,
        "bits_per_byte": nats / math.log(2) / n_bytes,
        "loss_nats": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


# --------------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def classify_predictions(model: Any, frames: Tensor, batch_size: int = DEFAULT_BATCH, quiet: bool = True) -> Tensor:
    """Predicted class per sample ``[N]``: argmax of the running-mean score at the last frame."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    device = _model_device(model)
    predictions = []
    with _progress(frames.shape[0], "sample", "eval", quiet) as bar:
        for start in range(0, frames.shape[0], batch_size):
            batch = frames[start : start + batch_size].to(device)  # [b, T, F]
            scores, _ = model.prefill(batch, model.init_state(batch.shape[0]))  # [b, T, C]
            scores = _as_tensor(scores).to(torch.float32)
            if not bool(torch.isfinite(scores).all()):
                raise EdgeseqError("the model's scores hold NaN/Inf (its outputs overflow; check the weights' "
                                   "magnitudes): accuracy over non-finite scores is not reported")
            predictions.append(running_mean_scores(scores)[:, -1].argmax(-1).cpu())
            bar.update(batch.shape[0])
    return torch.cat(predictions)


def evaluate_classifier(
    model: Any,
    data: str | tuple[Tensor, Tensor] = "digits",
    split: str = "validation",
    max_samples: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    data_options: dict | None = None,
    quiet: bool = False,
) -> dict:
    """Accuracy of a streaming classifier on a task split (or given ``(frames, labels)``)."""
    from edgeseq.tasks import load_classification

    if isinstance(data, tuple):
        frames, labels, dataset = torch.as_tensor(data[0], dtype=torch.float32), torch.as_tensor(data[1]), "arrays"
    else:
        frames, labels = load_classification(data, split, **(data_options or {}))
        dataset = str(data)
    if max_samples is not None:
        if max_samples < 1:
            raise InputError(f"--max-samples must be positive, got {max_samples}")
        frames, labels = frames[:max_samples], labels[:max_samples]
    predictions = classify_predictions(model, frames, batch_size=batch_size, quiet=quiet)
    correct = int((predictions == labels.to(torch.int64)).sum())
    return {
        "task": "classify",
        "dataset": dataset,
        "split": split,
        "accuracy": correct / labels.shape[0],
        "samples": int(labels.shape[0]),
        "correct": correct,
    }


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------


def default_data(model: Any, meta: dict | None = None) -> str:
    """The data a model is evaluated on by default: its own task (meta, then config)."""
    meta = meta or {}
    config = getattr(model, "config", None)
    dataset = meta.get("dataset") or getattr(config, "dataset", None)
    if dataset:
        return str(dataset)
    if model_task(model) == "lm":
        return "stdlib"
    raise InputError("the model does not name its dataset (meta/config 'dataset'); pass --data")


def evaluate(
    model: Any,
    tokenizer: Any = None,
    data: Any = None,
    *,
    split: str = "validation",
    max_bytes: int | None = None,
    max_samples: int | None = None,
    chunk_len: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
    data_options: dict | None = None,
    meta: dict | None = None,
    quiet: bool = False,
) -> dict:
    """Evaluate any streaming model (or runner with ``task``/``init_state``/``prefill``).

    ``data`` defaults to the model's own task (``meta['dataset']`` or ``config.dataset``).
    Language models: ``bits_per_byte``, ``loss_nats``, ``perplexity``, ``tokens``, ``bytes``.
    Classifiers: ``accuracy``, ``samples``, ``correct``.
    """
    task = model_task(model)
    if isinstance(model, torch.nn.Module):
        model.eval()
    data = default_data(model, meta) if data is None else data
    start = time.perf_counter()
    if task == "lm":
        result = evaluate_lm(model, tokenizer, data, split=split, max_bytes=max_bytes, chunk_len=chunk_len, quiet=quiet)
    else:
        if data_options is None:
            data_options = (meta or {}).get("dataset_options") or getattr(getattr(model, "config", None), "dataset_options", None)
        result = evaluate_classifier(model, data, split=split, max_samples=max_samples, batch_size=batch_size,
                                     data_options=data_options, quiet=quiet)
    result["wall_s"] = round(time.perf_counter() - start, 3)  # includes loading the data
    return result


def evaluate_loaded(loaded: Any, data: Any = None, **kwargs: Any) -> dict:
    """``evaluate`` on an :class:`edgeseq.checkpoints.LoadedModel` (its tokenizer and meta)."""
    result = evaluate(loaded.model, loaded.tokenizer, data, meta=loaded.meta, **kwargs)
    return {"model": loaded.source, "format": loaded.format, **result}


__all__ = [
    "classify_predictions",
    "default_data",
    "evaluate",
    "evaluate_classifier",
    "evaluate_lm",
    "evaluate_loaded",
    "lm_nats",
    "truncate_text",
]


# --------------------------------------------------------------------------------------------
# confidence intervals (used by reports): how much a figure can be trusted at this size
# --------------------------------------------------------------------------------------------

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
DEFAULT_BLOCK_BYTES = 256  # bits/byte standard error: blocks of this many predicted bytes


@torch.no_grad()
def lm_token_nats(model: Any, ids: Tensor, chunk_len: int = DEFAULT_CHUNK) -> Tensor:
    """Next-token cross-entropy per predicted token (nats, float64 ``[N-1]``), via chunked prefill
    exactly as ``lm_nats`` (whose total is this tensor's sum)."""
    if ids.numel() < 2:
        raise InputError(f"the text holds {ids.numel()} token(s); need at least 2 to evaluate")
    device = _model_device(model)
    ids = ids.to(device)
    n_predicted = ids.numel() - 1
    state = model.init_state(1)
    out = []
    for start in range(0, n_predicted, chunk_len):
        inputs = ids[start : min(start + chunk_len, n_predicted)]
        targets = ids[start + 1 : start + 1 + inputs.numel()]
        logits, state = model.prefill(inputs[None], state)
        logits = _as_tensor(logits).to(device)[0]
        if not logits.is_floating_point() or logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        out.append(F.cross_entropy(logits, targets, reduction="none").double().cpu())
    return torch.cat(out)


def ratio_stderr(numerators: list[float], denominators: list[float]) -> float:
    """Standard error of ``Σ num / Σ den`` over independent blocks (ratio estimator)."""
    k = len(numerators)
    total_den = float(sum(denominators))
    if k < 2 or total_den <= 0:
        return float("nan")
    ratio = float(sum(numerators)) / total_den
    ss = sum((n - ratio * d) ** 2 for n, d in zip(numerators, denominators))
    return math.sqrt(k / (k - 1) * ss) / total_den


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (accuracy ``correct / n``)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: dict, b: dict, z: float = Z95) -> dict | None:
    """Difference ``a − b`` of two results of ``evaluate_with_interval`` on the same data, with the
    standard error of the paired difference (same text blocks / same samples). ``None`` when the two
    were not scored on the same items. ``measurable`` is False when the difference lies within
    ``z`` standard errors of zero ("no measurable difference")."""
    if a.get("task") != b.get("task"):
        return None
    if a.get("task") == "lm":
        ba, bb = a.get("blocks") or [], b.get("blocks") or []
        if len(ba) != len(bb) or len(ba) < 2 or any(x[1] != y[1] for x, y in zip(ba, bb)):
            return None
        nums = [(x[0] - y[0]) / math.log(2) for x, y in zip(ba, bb)]
        dens = [x[1] for x in ba]
        diff = sum(nums) / sum(dens)
        se = ratio_stderr(nums, dens)
    else:
        ma, mb = a.get("correct_mask") or "", b.get("correct_mask") or ""
        if len(ma) != len(mb) or len(ma) < 2:
            return None
        d = [int(x) - int(y) for x, y in zip(ma, mb)]
        n = len(d)
        diff = sum(d) / n
        var = sum((v - diff) ** 2 for v in d) / (n - 1)
        se = math.sqrt(var / n)
        if se == 0 and diff == 0:
            return {"difference": 0.0, "stderr": 0.0, "low": 0.0, "high": 0.0, "measurable": False}
    low, high = diff - z * se, diff + z * se
    return {"difference": diff, "stderr": se, "low": low, "high": high, "measurable": not (low <= 0 <= high)}


def evaluate_with_interval(
    model: Any,
    tokenizer: Any = None,
    data: Any = None,
    *,
    split: str = "validation",
    max_bytes: int | None = None,
    max_samples: int | None = None,
    chunk_len: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    meta: dict | None = None,
) -> dict:
    """``evaluate``'s figures plus a 95 % confidence interval and what a paired comparison needs.

    Language models: ``bits_per_byte`` with ``stderr`` from blocks of ``block_bytes`` predicted
    bytes (``blocks``: ``[nats, bytes]`` per block). Classifiers: ``accuracy`` with a Wilson
    interval (``correct_mask``: one ``0``/``1`` per sample, in order).
    """
    task = model_task(model)
    if isinstance(model, torch.nn.Module):
        model.eval()
    data = default_data(model, meta) if data is None else data
    start = time.perf_counter()
    if task == "lm":
        tokenizer = tokenizer or ByteTokenizer()
        text_split = data if isinstance(data, TextSplit) else load_split(data, split)
        text = truncate_text(require_text(text_split).text, max_bytes)
        ids = encode_text(tokenizer, text)
        nats = lm_token_nats(model, ids, chunk_len=chunk_len)
        targets = ids[1:].tolist()
        cache: dict[int, int] = {}
        for t in set(targets):
            cache[t] = len(tokenizer.decode_bytes([t]))
        token_bytes = [cache[t] for t in targets]
        blocks: list[list[float]] = []
        acc_n = acc_b = 0.0
        for value, nb in zip(nats.tolist(), token_bytes):
            acc_n += value
            acc_b += nb
            if acc_b >= block_bytes:
                blocks.append([acc_n, int(acc_b)])
                acc_n = acc_b = 0.0
        if acc_b:
            blocks.append([acc_n, int(acc_b)])
        n_bytes = max(len(text.encode("utf-8")) - len(tokenizer.decode_bytes([int(ids[0])])), 1)
        total = float(nats.sum())
        bpb = total / math.log(2) / n_bytes
        se = ratio_stderr([b[0] / math.log(2) for b in blocks], [b[1] for b in blocks])
        result = {
            "task": "lm", "dataset": text_split.dataset, "split": text_split.split, "bits_per_byte": bpb,
            "loss_nats": total / nats.numel(), "tokens": int(nats.numel()), "bytes": n_bytes,
            "stderr": se, "interval": [bpb - Z95 * se, bpb + Z95 * se],
            "interval_method": f"95 % normal, standard error over {len(blocks)} blocks of ~{block_bytes} bytes",
            "blocks": blocks,
        }
    else:
        from edgeseq.tasks import load_classification

        data_options = (meta or {}).get("dataset_options") or getattr(getattr(model, "config", None), "dataset_options", None)
        if isinstance(data, tuple):
            frames, labels, dataset = torch.as_tensor(data[0], dtype=torch.float32), torch.as_tensor(data[1]), "arrays"
        else:
            frames, labels = load_classification(data, split, **(data_options or {}))
            dataset = str(data)
        if max_samples is not None:
            if max_samples < 1:
                raise InputError(f"--max-samples must be positive, got {max_samples}")
            frames, labels = frames[:max_samples], labels[:max_samples]
        hits = (classify_predictions(model, frames, batch_size=batch_size) == labels.to(torch.int64)).tolist()
        correct, n = int(sum(hits)), len(hits)
        result = {
            "task": "classify", "dataset": dataset, "split": split, "accuracy": correct / n, "samples": n,
            "correct": correct, "stderr": math.sqrt(max(correct / n * (1 - correct / n), 0.0) / n),
            "interval": list(wilson_interval(correct, n)), "interval_method": "95 % Wilson (binomial)",
            "correct_mask": "".join("1" if h else "0" for h in hits),
        }
    result["wall_s"] = round(time.perf_counter() - start, 3)
    return result
