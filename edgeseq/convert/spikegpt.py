"""Official SpikeGPT checkpoints (the RWKV-4 based releases of Zhu et al., 2023): detect a weights
file of that layout, read the config from tensor shapes and load it into
:class:`~edgeseq.models.spikegpt.SpikeGPT`, whose parameter names and shapes mirror the official
ones (``emb.weight``, ``blocks.{i}.att.time_mix_k`` ``[1, 1, C]``, …), so loading copies tensors.

Weights are read only through ``safetensors`` or ``torch.load(weights_only=True)``; a
``tokenizer.json`` (or ``20B_tokenizer.json``) next to the weights is used as the tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from edgeseq.checkpoints import CheckpointFormat, LoadedModel, load_state_into, read_weights
from edgeseq.errors import InputError
from edgeseq.models.spikegpt import SpikeGPT, SpikeGPTConfig
from edgeseq.tokenizer import ByteTokenizer, HFTokenizer

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_TOKENIZER_NAMES = ("tokenizer.json", "20B_tokenizer.json")


def _official_weights_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix in _WEIGHT_SUFFIXES else None
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        return candidates[0] if len(candidates) == 1 else None
    return None


def _tensor_names(path: Path) -> list[str]:
    """Names of the tensors in a weights file, cheaply (safetensors header, or an mmap'd load)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return list(obj) if isinstance(obj, dict) else []


def _detect_official(path: Path) -> bool:
    weights = _official_weights_file(Path(path))
    if weights is None:
        return False
    try:
        names = set(_tensor_names(weights))
    except Exception:
        return False
    names = {name.removeprefix("module.").removeprefix("_orig_mod.") for name in names}
    return {"emb.weight", "head.weight", "blocks.0.ln0.weight", "blocks.0.att.time_first"} <= names


def _strip_wrappers(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, value in tensors.items():
        for prefix in ("module.", "_orig_mod."):  # DeepSpeed/DDP and torch.compile wrappers
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def config_from_official(tensors: dict[str, Tensor], path: str | Path = "checkpoint") -> SpikeGPTConfig:
    """The SpikeGPTConfig an official state dict implies (sizes read from tensor shapes)."""
    tensors = _strip_wrappers(tensors)
    for name in ("emb.weight", "blocks.0.ffn.key.weight"):
        if name not in tensors:
            raise InputError(f"{path}: not an official SpikeGPT checkpoint (no tensor {name!r})")
    if any(".ffnPre." in name for name in tensors):
        raise InputError(f"{path}: the 'RWKV-ffnPre' variant (a ChannelMix in place of block 0's TimeMix) is not supported")
    if any(name.startswith(("head_q.", "head_k.")) for name in tensors):
        raise InputError(f"{path}: checkpoints with the head_q/head_k copy head (RWKV_HEAD_QK_DIM > 0) are not supported")
    vocab, d_model = tensors["emb.weight"].shape
    layers = {int(name.split(".")[1]) for name in tensors if name.startswith("blocks.")}
    n_layer = max(layers) + 1
    if layers != set(range(n_layer)):
        raise InputError(f"{path}: blocks {sorted(set(range(n_layer)) - layers)} are missing")
    hidden = tensors["blocks.0.ffn.key.weight"].shape[0]
    return SpikeGPTConfig(vocab_size=int(vocab), d_model=int(d_model), n_layer=n_layer,
                          d_ffn=0 if hidden == 4 * d_model else int(hidden), ctx_len=1024)


def official_state_dict(tensors: dict[str, Tensor], cfg: SpikeGPTConfig) -> dict[str, Tensor]:
    """Official tensors -> this model's state dict (float32, time parameters in their shapes)."""
    shapes = {
        ".time_decay": (cfg.d_model,),
        ".time_first": (cfg.d_model,),
        ".time_mix_k": (1, 1, cfg.d_model),
        ".time_mix_v": (1, 1, cfg.d_model),
        ".time_mix_r": (1, 1, cfg.d_model),
    }
    out = {}
    for name, value in _strip_wrappers(tensors).items():
        value = value.float()
        for suffix, shape in shapes.items():
            if name.endswith(suffix) and value.numel() == math.prod(shape):
                value = value.reshape(shape)  # some exports squeeze [1, 1, C] to [C]
        out[name] = value
    return out


def load_official(path: str | Path):
    """Load an official SpikeGPT weights file (``.pth`` read weights-only, or ``.safetensors``).

    ``path`` is the file or a folder holding exactly one weights file; a ``tokenizer.json`` (or
    ``20B_tokenizer.json``, the GPT-NeoX tokenizer of the public checkpoints) next to it is used.
    """
    path = Path(path)
    weights = _official_weights_file(path)
    if weights is None:
        raise InputError(f"{path}: expected an official SpikeGPT weights file (.pth/.safetensors) or a folder with exactly one")
    tensors = read_weights(weights)
    cfg = config_from_official(tensors, weights)
    model = SpikeGPT(cfg)
    load_state_into(model, official_state_dict(tensors, cfg), weights)
    model.eval()
    tokenizer_file = next((weights.parent / n for n in _TOKENIZER_NAMES if (weights.parent / n).is_file()), None)
    if tokenizer_file is not None:
        tokenizer = HFTokenizer(tokenizer_file)
    elif cfg.vocab_size <= 256:
        tokenizer = ByteTokenizer()
    else:
        raise InputError(
            f"{weights}: vocabulary of {cfg.vocab_size} tokens but no tokenizer found; put the GPT-NeoX "
            f"tokenizer (20B_tokenizer.json) next to the weights as tokenizer.json"
        )
    if tokenizer_file is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise InputError(f"{tokenizer_file}: tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.vocab_size}")
    return LoadedModel(model, tokenizer, str(path), "spikegpt-official", {"weights": str(weights)})


OFFICIAL_FORMAT = CheckpointFormat("spikegpt-official", _detect_official, load_official)


__all__ = ["OFFICIAL_FORMAT", "config_from_official", "load_official", "official_state_dict"]
