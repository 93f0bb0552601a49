"""Mamba checkpoints from elsewhere: Hugging Face ``MambaForCausalLM`` and ``state-spaces/mamba``.

Both layouts map onto :class:`edgeseq.models.mamba.Mamba` by renaming tensors only:

========================================  =========================================
Hugging Face (``transformers``)           edgeseq
========================================  =========================================
``backbone.embeddings.weight``            ``embedding.weight``
``backbone.layers.{i}.norm.weight``       ``layers.{i}.norm.weight``
``backbone.layers.{i}.mixer.<p>``         ``layers.{i}.mixer.<p>`` (same ``<p>``)
``backbone.norm_f.weight``                ``norm_f.weight``
``lm_head.weight``                        ``lm_head.weight`` (dropped when tied)
========================================  =========================================

``state-spaces/mamba`` uses ``backbone.embedding.weight`` and keeps ``lm_head.weight`` in the
file even when tied; its ``config.json`` holds ``d_model``, ``n_layer``, ``vocab_size``,
``ssm_cfg`` and ``pad_vocab_size_multiple`` (the embedding is padded to that multiple).

Weights are read only through ``safetensors`` or ``torch.load(weights_only=True)``. Every problem
is a one-line :class:`InputError` naming the file.

:func:`save_hf` writes the other way: an edgeseq Mamba as a folder ``transformers`` loads with
``MambaForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from edgeseq.checkpoints import (
    CheckpointFormat,
    LoadedModel,
    load_state_into,
    read_json,
    read_safetensors,
    read_torch_weights,
)
from edgeseq.errors import InputError
from edgeseq.models.mamba import Mamba, MambaConfig
from edgeseq.tokenizer import load_tokenizer

HF_CONFIG = "config.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------


def _folder_of(path: Path) -> Path:
    """A checkpoint folder, or the folder of a file inside one (config.json, a weights file)."""
    return path if path.is_dir() else path.parent


def _read_config_if_any(path: Path) -> dict | None:
    config_path = _folder_of(path) / HF_CONFIG
    if not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def read_checkpoint_weights(folder: Path) -> tuple[dict[str, Tensor], Path]:
    """Tensors of a checkpoint folder and the file they came from (for error messages).

    Order: ``model.safetensors``; sharded safetensors (``model.safetensors.index.json``);
    ``pytorch_model.bin`` (weights-only unpickling). Shards must hold every tensor the index
    names, and no tensor twice.
    """
    single = folder / "model.safetensors"
    if single.is_file():
        return read_safetensors(single), single
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        return _read_sharded(index_path), index_path
    for name in ("pytorch_model.bin", "model.bin", "model.pt", "model.pth"):
        if (folder / name).is_file():
            return read_torch_weights(folder / name), folder / name
    raise InputError(
        f"{folder}: no weights found: expected model.safetensors, model.safetensors.index.json "
        f"with its shards, or pytorch_model.bin"
    )


def _read_sharded(index_path: Path) -> dict[str, Tensor]:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index_path}: needs a non-empty 'weight_map' from tensor name to shard file")
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / str(shard)
        if not shard_path.is_file():
            raise InputError(f"{index_path}: shard {shard!r} is missing from the folder")
        part = read_safetensors(shard_path)
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise InputError(f"{shard_path}: tensor {twice[0]!r} also appears in another shard")
        tensors.update(part)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise InputError(f"{index_path}: the shards lack {len(missing)} tensor(s) the index names, e.g. {missing[0]!r}")
    return tensors


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


def _get(config: dict, key: str, kind: type, where: Path, default=None):
    """A typed config value; a wrong or missing value names the key and the file."""
    if key not in config:
        if default is None:
            raise InputError(f"{where}: missing {key!r}")
        return default
    value = config[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise InputError(f"{where}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _positive(value: int, key: str, where: Path) -> int:
    if value <= 0:
        raise InputError(f"{where}: {key!r} must be positive, got {value}")
    return value


def hf_config_to_edgeseq(config: dict, where: Path) -> MambaConfig:
    """A Hugging Face ``MambaConfig`` dict as an edgeseq :class:`MambaConfig`."""
    model_type = config.get("model_type")
    if model_type != "mamba":
        hint = " (Mamba-2 checkpoints load as format 'hf-mamba2')" if model_type == "mamba2" else ""
        raise InputError(f"{where}: model_type is {model_type!r}, edgeseq reads Mamba-1 ('mamba') checkpoints{hint}")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise InputError(f"{where}: hidden_act {act!r} is not supported (Mamba uses 'silu')")
    d_model = _positive(_get(config, "hidden_size", int, where), "hidden_size", where)
    expand = _positive(_get(config, "expand", int, where, 2), "expand", where)
    inner = config.get("intermediate_size")
    if inner is not None and inner != expand * d_model:
        raise InputError(f"{where}: intermediate_size {inner} != expand·hidden_size = {expand * d_model}")
    rank = config.get("time_step_rank", "auto")
    if rank == "auto":
        rank = 0
    elif not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise InputError(f"{where}: time_step_rank must be 'auto' or a positive int, got {rank!r}")
    return MambaConfig(
        vocab_size=_positive(_get(config, "vocab_size", int, where), "vocab_size", where),
        d_model=d_model,
        n_layer=_positive(_get(config, "num_hidden_layers", int, where), "num_hidden_layers", where),
        d_state=_positive(_get(config, "state_size", int, where, 16), "state_size", where),
        d_conv=_positive(_get(config, "conv_kernel", int, where, 4), "conv_kernel", where),
        expand=expand,
        dt_rank=rank,
        conv_bias=_get(config, "use_conv_bias", bool, where, True),
        bias=_get(config, "use_bias", bool, where, False),
        norm_eps=float(_get(config, "layer_norm_epsilon", float, where, 1e-5)),
        tie_embeddings=_get(config, "tie_word_embeddings", bool, where, True),
    )


def state_spaces_config_to_edgeseq(config: dict, where: Path) -> MambaConfig:
    """A ``state-spaces/mamba`` ``config.json`` as an edgeseq :class:`MambaConfig` (vocab padded)."""
    ssm_cfg = config.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise InputError(f"{where}: 'ssm_cfg' must be an object")
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer != "Mamba1":
        raise InputError(f"{where}: ssm_cfg.layer is {layer!r}; this format reads Mamba-1 checkpoints only"
                         + (" (Mamba-2 loads as format 'state-spaces-mamba2')" if layer == "Mamba2" else ""))
    if config.get("d_intermediate", 0):
        raise InputError(f"{where}: d_intermediate > 0 (MLP blocks between mixers) is not supported")
    if config.get("attn_layer_idx"):
        raise InputError(f"{where}: attention layers (attn_layer_idx) are not supported")
    if not config.get("rms_norm", True):
        raise InputError(f"{where}: rms_norm is false (LayerNorm blocks) which edgeseq's Mamba does not implement")
    vocab = _positive(_get(config, "vocab_size", int, where), "vocab_size", where)
    multiple = _positive(_get(config, "pad_vocab_size_multiple", int, where, 8), "pad_vocab_size_multiple", where)
    padded_vocab = -(-vocab // multiple) * multiple
    rank = ssm_cfg.get("dt_rank", "auto")
    if rank != "auto" and (not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0):
        raise InputError(f"{where}: ssm_cfg.dt_rank must be 'auto' or a positive int, got {rank!r}")
    return MambaConfig(
        vocab_size=padded_vocab,
        d_model=_positive(_get(config, "d_model", int, where), "d_model", where),
        n_layer=_positive(_get(config, "n_layer", int, where), "n_layer", where),
        d_state=_positive(_get(ssm_cfg, "d_state", int, where, 16), "ssm_cfg.d_state", where),
        d_conv=_positive(_get(ssm_cfg, "d_conv", int, where, 4), "ssm_cfg.d_conv", where),
        expand=_positive(_get(ssm_cfg, "expand", int, where, 2), "ssm_cfg.expand", where),
        dt_rank=0 if rank == "auto" else rank,
        conv_bias=_get(ssm_cfg, "conv_bias", bool, where, True),
        bias=_get(ssm_cfg, "bias", bool, where, False),
        norm_eps=float(_get(config, "norm_epsilon", float, where, 1e-5)),
        tie_embeddings=_get(config, "tie_embeddings", bool, where, True),
    )


# --------------------------------------------------------------------------------------------
# tensor names
# --------------------------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"^layers\.\d+\.(norm\.weight|mixer\..+)$")


def rename_to_edgeseq(tensors: dict[str, Tensor], tied: bool, where: Path) -> dict[str, Tensor]:
    """HF or state-spaces tensor names -> edgeseq names; unknown names are kept (and then reported)."""
    prefixed = any(k.startswith("backbone.") for k in tensors)
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        name = key[len("backbone."):] if prefixed and key.startswith("backbone.") else key
        if name in ("embeddings.weight", "embedding.weight"):
            name = "embedding.weight"
        elif name == "lm_head.weight" and tied:
            continue  # tied to the embedding (state-spaces saves it anyway; HF ignores it)
        out[name] = value
    if "embedding.weight" not in out:
        raise InputError(f"{where}: no embedding tensor (backbone.embeddings.weight or backbone.embedding.weight)")
    if not tied and "lm_head.weight" not in out:
        raise InputError(f"{where}: the config says the LM head is not tied, but lm_head.weight is missing")
    return out


def rename_to_hf(state: dict[str, Tensor], tied: bool) -> dict[str, Tensor]:
    """edgeseq names -> Hugging Face ``MambaForCausalLM`` names."""
    out = {}
    for name, value in state.items():
        if name == "embedding.weight":
            out["backbone.embeddings.weight"] = value
        elif name == "lm_head.weight":
            if not tied:
                out["lm_head.weight"] = value
        elif name == "norm_f.weight" or _LAYER_KEY.match(name):
            out[f"backbone.{name}"] = value
        # other entries (none today) have no Hugging Face counterpart
    return out


# --------------------------------------------------------------------------------------------
# the two formats
# --------------------------------------------------------------------------------------------


def _build_and_fill(cfg, tensors: dict[str, Tensor], weights_path: Path, model_class: type = Mamba):
    """A ``model_class(cfg)`` filled from edgeseq-named tensors; a vocabulary mismatch is one line."""
    embedding = tensors["embedding.weight"]
    if embedding.ndim == 2 and embedding.shape[0] != cfg.vocab_size:
        raise InputError(
            f"{weights_path}: tensor 'embedding.weight' has {embedding.shape[0]} rows but the config's "
            f"vocabulary is {cfg.vocab_size}; config.json and the weights do not belong together"
        )
    model = model_class(cfg)
    load_state_into(model, tensors, weights_path)
    return model


def _checked_tokenizer(folder: Path, cfg: MambaConfig):
    """The folder's tokenizer (bytes when none), refused when it emits ids the model cannot embed."""
    tokenizer = load_tokenizer(folder)
    vocab = getattr(tokenizer, "vocab_size", 0)
    if getattr(tokenizer, "kind", "bytes") == "hf" and vocab > cfg.vocab_size:
        raise InputError(
            f"{folder / 'tokenizer.json'}: the tokenizer has {vocab} tokens but the model's vocabulary is "
            f"{cfg.vocab_size}; they do not belong together"
        )
    return tokenizer


def detect_hf(path: Path) -> bool:
    config = _read_config_if_any(path)
    return config is not None and config.get("model_type") == "mamba"


def load_hf(path: Path) -> LoadedModel:
    """A Hugging Face Mamba folder (``config.json`` + safetensors, sharded safetensors or a .bin)."""
    folder = _folder_of(path)
    config_path = folder / HF_CONFIG
    cfg = hf_config_to_edgeseq(read_json(config_path), config_path)
    tensors, weights_path = read_checkpoint_weights(folder)
    model = _build_and_fill(cfg, rename_to_edgeseq(tensors, cfg.tie_embeddings, weights_path), weights_path)
    return LoadedModel(model, _checked_tokenizer(folder, cfg), str(path), "hf-mamba", {"task": "lm"})


def detect_state_spaces(path: Path) -> bool:
    config = _read_config_if_any(path)
    if config is None or "model_type" in config or not {"d_model", "n_layer"} <= set(config):
        return False
    ssm_cfg = config.get("ssm_cfg")
    return not (isinstance(ssm_cfg, dict) and ssm_cfg.get("layer") == "Mamba2")  # mamba2_convert reads those


def load_state_spaces(path: Path) -> LoadedModel:
    """A ``state-spaces/mamba`` folder (``config.json`` + ``pytorch_model.bin``)."""
    folder = _folder_of(path)
    config_path = folder / HF_CONFIG
    cfg = state_spaces_config_to_edgeseq(read_json(config_path), config_path)
    tensors, weights_path = read_checkpoint_weights(folder)
    model = _build_and_fill(cfg, rename_to_edgeseq(tensors, cfg.tie_embeddings, weights_path), weights_path)
    return LoadedModel(model, _checked_tokenizer(folder, cfg), str(path), "state-spaces-mamba", {"task": "lm"})


HF_FORMAT = CheckpointFormat("hf-mamba", detect_hf, load_hf)
STATE_SPACES_FORMAT = CheckpointFormat("state-spaces-mamba", detect_state_spaces, load_state_spaces)


# --------------------------------------------------------------------------------------------
# the other way: edgeseq -> Hugging Face
# --------------------------------------------------------------------------------------------


def hf_config_dict(cfg: MambaConfig) -> dict:
    """The ``config.json`` of :func:`save_hf` (fields ``transformers.MambaConfig`` reads)."""
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "intermediate_size": cfg.d_inner,
        "time_step_rank": cfg.rank,
        "use_conv_bias": cfg.conv_bias,
        "use_bias": cfg.bias,
        "layer_norm_epsilon": cfg.norm_eps,
        "hidden_act": "silu",
        "residual_in_fp32": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "time_step_min": cfg.dt_min,
        "time_step_max": cfg.dt_max,
        "time_step_floor": cfg.dt_init_floor,
    }


def save_hf(model: Mamba, folder: str | Path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face Mamba folder (``config.json`` + ``model.safetensors``)."""
    if not isinstance(model, Mamba):
        raise InputError(f"save_hf writes Mamba models only, got {type(model).__name__}")
    return write_hf_folder(model, folder, hf_config_dict(model.config), tokenizer)


def write_hf_folder(model, folder: str | Path, config: dict, tokenizer=None) -> Path:
    """``model.safetensors`` (HF key names) + ``config.json`` (+ ``tokenizer.json``), each written atomically."""
    from safetensors.torch import save_file

    from edgeseq.checkpoints import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    hf_state = rename_to_hf(state, model.config.tie_embeddings)
    if tokenizer is not None and getattr(tokenizer, "kind", "bytes") == "hf":
        import shutil

        shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
    atomic_write(folder / "model.safetensors", lambda p: save_file(hf_state, str(p), metadata={"format": "pt"}))
    config_text = json.dumps(config, indent=2) + "\n"
    atomic_write(folder / HF_CONFIG, lambda p: Path(p).write_text(config_text))
    return folder


__all__ = [
    "HF_FORMAT",
    "STATE_SPACES_FORMAT",
    "hf_config_dict",
    "hf_config_to_edgeseq",
    "load_hf",
    "load_state_spaces",
    "read_checkpoint_weights",
    "rename_to_edgeseq",
    "rename_to_hf",
    "save_hf",
    "write_hf_folder",
    "state_spaces_config_to_edgeseq",
]
