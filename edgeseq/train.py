"""Training small streaming models: language models on text, classifiers on frame sequences.

One loop for every family of the model registry:

* AdamW (weight decay only on matrices; norms, biases and SSM parameters are not decayed),
* a linear warm-up then a cosine decay of the learning rate to ``min_lr_ratio × lr``,
* gradient-norm clipping, explicit seeds (model init, batches),
* periodic validation, a progress bar on stderr, and a checkpoint written at every validation
  (so a run stopped by ``max_minutes`` or an interrupt still leaves a usable model).

Language models (``task == "lm"``) learn next-token prediction on random windows of
``seq_len + 1`` tokens of the train split (``edgeseq.corpus.random_windows``); validation is
bits per byte through the streaming evaluator.

Classifiers (``task == "classify"``) get the cross-entropy of the *time-averaged* per-frame
scores (``classify_loss="mean"``, the default): the mean over all frames is exactly what the
streaming prediction reads after the last frame, so training optimises the deployed decision.
``classify_loss="frames"`` instead applies the loss to every frame's score (a denser signal
that makes early frames confident, at the price of optimising a different decision).

The model is saved with :func:`edgeseq.checkpoints.save_model` and meta
``{task, dataset, dataset_options, train_command, val_bits_per_byte | val_accuracy, params, ...}``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseq.errors import InputError

LM_DEFAULTS = {"batch_size": 16, "seq_len": 256, "lr": 2e-3}
CLASSIFY_DEFAULTS = {"batch_size": 64, "seq_len": 0, "lr": 2e-3}


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one run (all recorded in the checkpoint's meta)."""

    steps: int = 1000
    batch_size: int | None = None  # None: 16 for language models, 64 for classifiers
    seq_len: int | None = None  # language models: window length (None: 256)
    lr: float | None = None  # None: 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None: 5% of steps (at most 200)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int | None = None  # None: 10 validations over the run
    eval_max_bytes: int | None = 32768  # language models: periodic validation size
    eval_max_samples: int | None = None  # classifiers: periodic validation size
    final_eval_max_bytes: int | None = None  # None: the whole validation split
    classify_loss: str = "mean"  # "mean" | "frames"
    max_minutes: float | None = None  # stop early (with a saved model) after this wall time
    keep: str = "best"  # "best": the weights of the best validation; "last": the final weights
    device: str = "cpu"
    threads: int | None = None


# --------------------------------------------------------------------------------------------
# small pieces
# --------------------------------------------------------------------------------------------


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio × base_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear/conv/embedding weights); never norms, biases, SSM vectors or the
    per-channel time mixes/decays of RWKV blocks (stored as ``[1, 1, C]`` but vectors in meaning)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        vector_like = name.endswith("A_log") or ".time_" in name or sum(d > 1 for d in p.shape) < 2
        is_matrix = p.dim() >= 2 and not vector_like
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["d_model=192", "n_layer=4"]`` -> ``{"d_model": 192, "n_layer": 4}`` (JSON values, else str)."""
    import json

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _config_fields(family: str) -> set[str]:
    from edgeseq.models import config_class

    return {f.name for f in dataclasses.fields(config_class(family))}


def _model_task(family: str) -> str:
    from edgeseq.models import model_class

    return getattr(model_class(family), "task", "lm")


def build_for_data(family: str, task: str, data: str, data_options: dict, overrides: dict, *,
                   vocab_size: int = 256, frame_dim: int | None = None, n_classes: int | None = None):
    """Build ``family`` with the config fields the data implies, then the user's overrides.

    Language models get their vocabulary size from the tokenizer; classifiers get the frame width
    and the number of classes from the data, and ``dataset``/``dataset_options`` naming their
    task. The config names the fields that set those sizes (``input_size_field``,
    ``output_size_field``); the built model's ``io_spec()`` is checked against the data.
    """
    from edgeseq.models import build_model, config_class

    fields = _config_fields(family)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown {family} config field(s) in --set: {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    cfg_cls = config_class(family)
    input_field, output_field = cfg_cls.input_size_field, cfg_cls.output_size_field
    if not (input_field in fields and output_field in fields):
        raise InputError(f"{cfg_cls.__name__} does not name the fields that set its input and output sizes "
                         "(input_size_field, output_size_field)")
    implied: dict[str, Any] = {}
    if task == "lm":
        implied[input_field] = implied[output_field] = vocab_size
    else:
        if n_classes:
            implied[output_field] = n_classes
        if frame_dim:
            implied[input_field] = frame_dim
        if "dataset" in fields:
            implied["dataset"] = str(data)
        if "dataset_options" in fields:
            implied["dataset_options"] = dict(data_options)
    model = build_model(family, **{**implied, **overrides})
    _check_io_fits_data(model, task, vocab_size, frame_dim, n_classes)
    return model


def _check_io_fits_data(model, task: str, vocab_size: int, frame_dim: int | None, n_classes: int | None) -> None:
    """The model's declared step input/output against the data (an ``--set`` may have changed a size)."""
    io = model.io_spec()
    if task == "lm":
        if io.input_kind != "tokens":
            raise InputError(f"{type(model).__name__} takes frames of features; text data needs a language model")
        if io.input_size < vocab_size:
            raise InputError(f"the model takes token ids below {io.input_size}, the tokenizer has {vocab_size} tokens")
        return
    if io.input_kind != "features":
        raise InputError(f"{type(model).__name__} takes token ids; this data holds frames of features")
    if frame_dim and io.input_size != frame_dim:
        raise InputError(f"the model takes frames of {io.input_size} features, the data has {frame_dim}")
    if n_classes and io.output_size < n_classes:
        raise InputError(f"the model scores {io.output_size} classes, the data has {n_classes}")


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="step", desc="train", file=sys.stderr, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


# --------------------------------------------------------------------------------------------
# the two tasks: batches, losses, validation
# --------------------------------------------------------------------------------------------


class _LMData:
    def __init__(self, data: str, tokenizer, seq_len: int, generator: torch.Generator):
        from edgeseq.corpus import encode_text, load_split, require_text

        self.train = require_text(load_split(data, "train"))
        self.validation = require_text(load_split(data, "validation"))
        self.dataset = self.train.dataset
        self.ids = encode_text(tokenizer, self.train.text)  # [N]
        self.tokenizer, self.seq_len, self.generator = tokenizer, seq_len, generator
        if self.ids.numel() < seq_len + 1:
            raise InputError(f"{self.train.source}: the train split holds {self.ids.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}; use a smaller --seq-len")

    def batch(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        from edgeseq.corpus import random_windows

        windows = random_windows(self.ids, batch_size, self.seq_len, self.generator).to(device)
        return windows[:, :-1], windows[:, 1:]

    @staticmethod
    def loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        logits = model(inputs)  # [B, T, V]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    def validate(self, model: nn.Module, max_bytes: int | None) -> dict:
        from edgeseq.evaluate import evaluate_lm

        result = evaluate_lm(model, self.tokenizer, self.validation, max_bytes=max_bytes, quiet=True)
        return {"val_loss": result["loss_nats"], "val_bits_per_byte": result["bits_per_byte"]}


class _ClassifyData:
    def __init__(self, data: str, options: dict, generator: torch.Generator, loss_kind: str):
        from edgeseq.tasks import load_classification

        if loss_kind not in ("mean", "frames"):
            raise InputError(f"classify_loss must be 'mean' or 'frames', got {loss_kind!r}")
        self.dataset, self.options, self.loss_kind = str(data), options, loss_kind
        self.frames, self.labels = load_classification(data, "train", **options)
        self.val_frames, self.val_labels = load_classification(data, "validation", **options)
        self.generator = generator

    def batch(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        index = torch.randint(0, self.frames.shape[0], (batch_size,), generator=self.generator)
        return self.frames[index].to(device), self.labels[index].to(device)

    def loss(self, model: nn.Module, frames: Tensor, labels: Tensor) -> Tensor:
        scores = model(frames).float()  # [B, T, C]
        if self.loss_kind == "mean":
            return F.cross_entropy(scores.mean(dim=1), labels)
        return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), labels.repeat_interleave(scores.shape[1]))

    def validate(self, model: nn.Module, max_samples: int | None) -> dict:
        from edgeseq.evaluate import evaluate_classifier

        frames, labels = self.val_frames, self.val_labels
        if max_samples is not None:
            frames, labels = frames[:max_samples], labels[:max_samples]
        result = evaluate_classifier(model, (frames, labels), quiet=True)
        with torch.no_grad():
            device = next(model.parameters()).device
            losses = [self.loss(model, frames[i : i + 256].to(device), labels[i : i + 256].to(device)).item() * len(labels[i : i + 256])
                      for i in range(0, len(labels), 256)]
        return {"val_loss": sum(losses) / len(labels), "val_accuracy": result["accuracy"]}


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


def train(
    family: str,
    data: str,
    out_dir: str | Path,
    steps: int = 1000,
    *,
    overrides: dict[str, Any] | None = None,
    data_options: dict | None = None,
    train_command: str | None = None,
    quiet: bool = False,
    log=None,
    **hyper: Any,
) -> dict:
    """Train a model of ``family`` on ``data`` for ``steps`` steps and save it to ``out_dir``.

    ``data``: a language-model corpus (``shakespeare``/``stdlib``/a text file) or a
    classification task (``digits``, ``speech-commands``, a ``.npz`` file). ``overrides`` set
    model config fields; ``hyper`` sets :class:`TrainConfig` fields. Returns the final
    ``train_loss``, ``val_loss``, ``val_bits_per_byte`` or ``val_accuracy``, ``params``,
    ``steps``, ``wall_s``, ``out_dir`` and the validation ``history``.
    """
    from edgeseq.checkpoints import save_model
    from edgeseq.tasks import data_kind
    from edgeseq.tokenizer import ByteTokenizer

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(hyper) - known)
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(unknown)}")
    cfg = TrainConfig(steps=steps, **hyper)
    if cfg.keep not in ("best", "last"):
        raise InputError(f"keep must be 'best' or 'last', got {cfg.keep!r}")
    if cfg.steps < 1:
        raise InputError(f"--steps must be at least 1, got {cfg.steps}")
    task = _model_task(family)  # also rejects unknown families
    kind = data_kind(str(data))
    if kind != task:
        raise InputError(f"{family} is a {'language model' if task == 'lm' else 'classifier'} but {data!r} is "
                         f"{'text' if kind == 'lm' else 'a classification task'}; pick matching --data")
    defaults = LM_DEFAULTS if task == "lm" else CLASSIFY_DEFAULTS
    batch_size = cfg.batch_size or defaults["batch_size"]
    seq_len = cfg.seq_len or defaults["seq_len"]
    lr = cfg.lr or defaults["lr"]
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(200, cfg.steps // 20)
    eval_every = cfg.eval_every or max(1, cfg.steps // 10)
    if batch_size < 1 or (task == "lm" and seq_len < 1):
        raise InputError("--batch-size and --seq-len must be positive")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {cfg.device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    data_options = dict(data_options or {})

    torch.manual_seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = ByteTokenizer()
    if task == "lm":
        source = _LMData(str(data), tokenizer, seq_len, batch_gen)
        eval_limit = cfg.eval_max_bytes
    else:
        source = _ClassifyData(str(data), data_options, batch_gen, cfg.classify_loss)
        eval_limit = cfg.eval_max_samples
    if task == "lm":
        model = build_for_data(family, task, str(data), data_options, overrides or {}, vocab_size=tokenizer.vocab_size)
    else:
        from edgeseq.tasks import TASKS, task_info

        info = task_info(str(data)) if str(data) in TASKS else {}
        n_classes = int(info.get("n_classes") or int(source.labels.max()) + 1)
        model = build_for_data(family, task, str(data), data_options, overrides or {},
                               frame_dim=int(source.frames.shape[-1]), n_classes=n_classes)
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=tuple(cfg.betas))
    out_dir = Path(out_dir)
    hyper_record = {**dataclasses.asdict(cfg), "batch_size": batch_size, "seq_len": seq_len if task == "lm" else None,
                    "lr": lr, "warmup_steps": warmup, "eval_every": eval_every}
    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        elif not quiet:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)  # keeps a running progress bar intact

    say(f"training {family} ({params:,} parameters) on {source.dataset} for {cfg.steps} steps, "
        f"batch {batch_size}{f' × {seq_len} tokens' if task == 'lm' else ''}, device {device}")

    history: list[dict] = []
    recent: list[float] = []
    start_time = time.monotonic()
    step = 0
    stopped_early = False

    best: dict[str, Any] = {"val_loss": math.inf, "step": 0, "weights": None}

    def validate_and_save(final: bool) -> dict:
        model.eval()
        if final and cfg.keep == "best" and best["weights"] is not None:
            model.load_state_dict(best["weights"])  # the best periodic validation wins
        limit = cfg.final_eval_max_bytes if (final and task == "lm") else (None if final else eval_limit)
        metrics = source.validate(model, limit)
        model.train()
        record = {"step": step, "train_loss": sum(recent) / max(1, len(recent)), **metrics,
                  "wall_s": round(time.monotonic() - start_time, 1)}
        if not final:
            if cfg.keep == "best" and metrics["val_loss"] >= best["val_loss"]:
                return record  # worse than the kept weights: nothing to save
            best.update(val_loss=metrics["val_loss"], step=step,
                        weights={k: v.detach().clone() for k, v in model.state_dict().items()})
        kept_step = best["step"] if (final and cfg.keep == "best" and best["weights"] is not None) else step
        meta = {
            "task": task,
            "dataset": source.dataset,
            "dataset_options": data_options,
            "tokenizer": "bytes" if task == "lm" else None,
            "train_command": train_command or f"edgeseq.train.train({family!r}, {str(data)!r}, steps={cfg.steps}, ...)",
            "params": params,
            "steps": step,
            "kept_step": kept_step,
            "train": hyper_record,
            "train_loss": record["train_loss"],
            "val_loss": metrics["val_loss"],
            "val_split": "validation" if final else f"validation (first {limit} {'bytes' if task == 'lm' else 'samples'})" if limit else "validation",
            "wall_s": record["wall_s"],
            "torch": torch.__version__,
        }
        meta.update({k: v for k, v in metrics.items() if k.startswith("val_")})
        meta["metrics"] = {k: v for k, v in metrics.items() if k.startswith("val_")}  # what `edgeseq models` shows
        save_model(model, out_dir, meta={k: v for k, v in meta.items() if v is not None})  # copies to CPU
        return record

    model.train()
    try:
        with _progress(cfg.steps, quiet) as bar:
            while step < cfg.steps:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg.steps, lr, warmup, cfg.min_lr_ratio)
                inputs, targets = source.batch(batch_size, device)
                loss = source.loss(model, inputs, targets)
                if not torch.isfinite(loss):
                    from edgeseq.errors import EdgeseqError

                    raise EdgeseqError(f"the loss became {loss.item()} at step {step}; lower --lr or raise --warmup-steps")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                recent = (recent + [loss.item()])[-20:]
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{recent[-1]:.3f}")
                if step % eval_every == 0 and step < cfg.steps:
                    record = validate_and_save(final=False)
                    history.append(record)
                    say(f"step {step}: train loss {record['train_loss']:.4f}, " + ", ".join(
                        f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_")))
                if cfg.max_minutes is not None and time.monotonic() - start_time > 60 * cfg.max_minutes:
                    stopped_early = True
                    say(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached")
                    break
    except KeyboardInterrupt:
        stopped_early = True
        say(f"interrupted at step {step}: saving the model")
    if step > 0 and (not history or history[-1]["step"] != step):
        history.append(validate_and_save(final=False))  # the last weights compete for "best" too
    final = validate_and_save(final=True)
    history.append({**final, "final": True})  # the kept weights on the whole validation split
    return {
        "family": family,
        "task": task,
        "dataset": source.dataset,
        "out_dir": str(out_dir),
        "params": params,
        "steps": step,
        "stopped_early": stopped_early,
        "kept_step": best["step"] if (cfg.keep == "best" and best["weights"] is not None) else step,
        **{k: v for k, v in final.items() if k != "step"},
        "history": history,
    }


__all__ = ["TrainConfig", "lr_at", "param_groups", "parse_overrides", "train"]
