"""Published LMUFormer checkpoints (the ``lmu_rnn_conv1d`` and ``slmu_rnn_ms_conv1d`` models of
Liu et al., 2024): detect a state dict of that layout, read its config from tensor shapes (the LMU
window θ is recovered from the stored Ā) and load it into :class:`~edgeseq.models.lmuformer.LMUFormer`
or :class:`~edgeseq.models.lmuformer.SpikingLMUFormer`, whose module names are the published ones.

Weights are read only through ``torch.load(weights_only=True)``; the published impulse-response
buffers (``H``, ``fft_H``) are not loaded (they are recomputed for each sequence length). The
published models run causally here (the embedding is delayed, see ``docs/lmuformer.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from edgeseq.checkpoints import CheckpointFormat, LoadedModel, load_state_into, read_torch_weights
from edgeseq.errors import InputError
from edgeseq.models.lmuformer import (
    LMUFormer,
    LMUFormerConfig,
    SpikingLMUFormer,
    SpikingLMUFormerConfig,
    _LMUFormerBase,
    legendre_memory_matrices,
)

_OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin")


def _official_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix in _OFFICIAL_SUFFIXES:
        return path
    if path.is_dir():
        for name in ("best_model.pth", "model.pth"):
            if (path / name).is_file():
                return path / name
    return None


def _strip_prefix(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {re.sub(r"^(module\.)+", "", k): v for k, v in tensors.items()}


def _peek_keys(path: Path) -> list[str]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return []
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
        return [re.sub(r"^(module\.)+", "", str(k)) for k in obj]
    return []


def _detect_official(path: Path) -> bool:
    file = _official_file(Path(path))
    if file is None:
        return False
    keys = _peek_keys(file)
    return any(k.startswith("block.0.attn.lmu.W_u") for k in keys) and any(k.startswith("patch_embed.") for k in keys)


def _infer_theta(A_official: Tensor, order: int, hint: float) -> float:
    """The LMU window that reproduces the checkpoint's Ā (published models use θ = seq_len)."""
    candidates = [hint] + [float(t) for t in (128, 64, 100, 101, 784, 256, 512, 1024, 32, 16, 8) if t != hint]
    for theta in candidates:
        A_bar, _ = legendre_memory_matrices(order, theta)
        if torch.allclose(A_bar.float(), A_official.float(), atol=1e-5, rtol=1e-4):
            return theta
    raise InputError(
        f"LMU matrix A ({order}x{order}) matches no Legendre window tried ({', '.join(map(str, candidates))})"
    )


def official_config(tensors: dict[str, Tensor]) -> LMUFormerConfig:
    """The config of a published LMUFormer state dict (``lmu_rnn_conv1d`` or ``slmu_rnn_ms_conv1d``)."""
    keys = set(tensors)
    depth = len({int(m.group(1)) for k in keys if (m := re.match(r"block\.(\d+)\.", k))})
    head = tensors["head.weight"]
    lmu = "block.0.attn.lmu."
    order = tensors[lmu + "A"].shape[0]
    hint = float(tensors[lmu + "H"].shape[-1]) if lmu + "H" in tensors else 128.0
    theta = _infer_theta(tensors[lmu + "A"], order, hint)
    first_conv = tensors.get("patch_embed.proj_conv.weight", tensors.get("patch_embed.conv_layers.0.0.weight"))
    options = {"n_mels": int(first_conv.shape[1])} if first_conv is not None else {}
    common = dict(dim=head.shape[1], depth=depth, n_classes=head.shape[0], memory_size=order, theta=theta,
                  dataset="speech-commands", dataset_options=options)
    if "patch_embed.proj_conv.weight" in keys:
        if "patch_embed.rpe_bn.weight" in keys or "block.0.mlp.fc1_bn.weight" in keys and "block.0.attn.prev_bn.weight" not in keys:
            raise InputError("this is the published spiking model without membrane shortcuts (slmu_rnn_conv1d); "
                             "edgeseq loads lmu_rnn_conv1d and slmu_rnn_ms_conv1d checkpoints")
        conv = tensors["patch_embed.proj_conv.weight"]
        n_layers = 1 + len({k for k in keys if re.match(r"patch_embed\.proj_conv\d+\.weight", k)})
        hidden = tensors["block.0.mlp.fc1_conv.weight"].shape[0]
        return SpikingLMUFormerConfig(input_dim=conv.shape[1], embed_layers=n_layers, embed_kernel=conv.shape[2],
                                      mlp_ratio=hidden / head.shape[1], **common)
    if "patch_embed.conv_layers.0.0.weight" in keys:
        conv = tensors["patch_embed.conv_layers.0.0.weight"]
        n_layers = len({k for k in keys if re.match(r"patch_embed\.conv_layers\.\d+\.0\.weight", k)})
        hidden = tensors["block.0.mlp.fc1_conv.weight"].shape[0]
        return LMUFormerConfig(input_dim=conv.shape[1], embed_layers=n_layers, embed_kernel=conv.shape[2],
                               mlp_ratio=hidden / head.shape[1], **common)
    raise InputError("not a published LMUFormer layout: no patch_embed.conv_layers.0.0 or patch_embed.proj_conv")


def load_official_state(tensors: dict[str, Tensor], source: str = "checkpoint") -> _LMUFormerBase:
    """Build the model a published LMUFormer state dict describes and load its weights."""
    tensors = _strip_prefix(tensors)
    try:
        cfg = official_config(tensors)
    except KeyError as exc:
        raise InputError(f"{source}: not a published LMUFormer state dict (missing {exc.args[0]!r})") from None
    model: _LMUFormerBase = SpikingLMUFormer(cfg) if isinstance(cfg, SpikingLMUFormerConfig) else LMUFormer(cfg)  # type: ignore[arg-type]
    # the published impulse response buffers (H, fft_H) are recomputed for each sequence length
    tensors = {k: v for k, v in tensors.items() if not re.search(r"\.lmu\.(H|fft_H)$", k)}
    load_state_into(model, tensors, source)
    return model.eval()


def _load_official(path: Path):
    file = _official_file(Path(path))
    if file is None:
        raise InputError(f"{path}: no .pth/.pt state dict found")
    model = load_official_state(read_torch_weights(file), str(file))
    return LoadedModel(model, source=str(path), format="lmuformer-official",
                       meta={"note": "published LMUFormer weights run causally (embedding delayed, see docs/lmuformer.md)"})


OFFICIAL_FORMAT = CheckpointFormat("lmuformer-official", _detect_official, _load_official)


__all__ = ["OFFICIAL_FORMAT", "load_official_state", "official_config"]
