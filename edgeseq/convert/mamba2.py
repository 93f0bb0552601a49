"""Mamba-2 checkpoints from elsewhere: Hugging Face ``Mamba2ForCausalLM`` and ``state-spaces/mamba2-*``.

Both layouts map onto :class:`edgeseq.models.mamba2.Mamba2` by renaming tensors only, with the
same renaming as Mamba-1 (``edgeseq.convert.mamba.rename_to_edgeseq``):

========================================  =========================================
Hugging Face / state-spaces               edgeseq
========================================  =========================================
``backbone.embeddings.weight`` (HF)       ``embedding.weight``
``backbone.embedding.weight`` (s-s)       ``embedding.weight``
``backbone.layers.{i}.norm.weight``       ``layers.{i}.norm.weight``
``backbone.layers.{i}.mixer.<p>``         ``layers.{i}.mixer.<p>``: ``in_proj``, ``conv1d``,
                                          ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``
``backbone.norm_f.weight``                ``norm_f.weight``
``lm_head.weight``                        ``lm_head.weight`` (dropped when tied)
========================================  =========================================

Config keys: Hugging Face ``Mamba2Config`` (``model_type: "mamba2"``) gives ``hidden_size``,
``num_hidden_layers``, ``state_size``, ``conv_kernel``, ``expand``, ``head_dim``, ``num_heads``,
``n_groups``, ``use_bias``, ``use_conv_bias``, ``layer_norm_epsilon`` (both norms),
``time_step_limit`` and ``tie_word_embeddings`` (default *false* for Mamba-2). ``state-spaces``
gives ``d_model``, ``n_layer``, ``vocab_size`` (padded to ``pad_vocab_size_multiple``),
``tie_embeddings``, ``norm_epsilon`` (block norms; the gated norm uses 1e-5 there) and
``ssm_cfg`` with ``layer: "Mamba2"``, ``d_state``, ``d_conv``, ``expand``, ``headdim``,
``ngroups``, ``dt_limit``. Variants edgeseq does not implement (an MLP share of ``in_proj``
via ``d_ssm``, ``D_has_hdim``, ``norm_before_gate``, attention layers) are refused by name.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgeseq.checkpoints import CheckpointFormat, LoadedModel, read_json
from edgeseq.errors import InputError
from edgeseq.models.mamba2 import Mamba2, Mamba2Config
from edgeseq.convert.mamba import (
    HF_CONFIG,
    _build_and_fill,
    _checked_tokenizer,
    _folder_of,
    _get,
    _positive,
    _read_config_if_any,
    read_checkpoint_weights,
    rename_to_edgeseq,
    write_hf_folder,
)


def _json_float(value):
    """A number as JSON writers spell it: a number, ``"Infinity"``/``"inf"``, or transformers'
    ``{"__float__": "Infinity"}``; anything else comes back unchanged (and is refused later)."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        value = value["__float__"]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _dt_limit(value, key: str, where: Path) -> tuple[float, float]:
    """``[min, max]`` with ``max`` possibly infinite -> (min, max) with 0 meaning no upper limit."""
    if value is None:
        return 0.0, 0.0
    if isinstance(value, (list, tuple)):
        value = [_json_float(v) for v in value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InputError(f"{where}: {key!r} must be a pair [min, max], got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo < 0 or hi <= 0 or hi < lo or math.isnan(lo) or math.isnan(hi):
        raise InputError(f"{where}: {key!r} must satisfy 0 <= min <= max, got {value!r}")
    return lo, (0.0 if math.isinf(hi) else hi)


def _checked_heads(d_model: int, expand: int, headdim: int, where: Path) -> None:
    if (expand * d_model) % headdim:
        raise InputError(f"{where}: head dimension {headdim} does not divide expand·hidden size = {expand * d_model}")


def hf_config_to_edgeseq(config: dict, where: Path) -> Mamba2Config:
    """A Hugging Face ``Mamba2Config`` dict as an edgeseq :class:`Mamba2Config`."""
    if config.get("model_type") != "mamba2":
        raise InputError(f"{where}: model_type is {config.get('model_type')!r}, expected 'mamba2'")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise InputError(f"{where}: hidden_act {act!r} is not supported (Mamba-2 uses 'silu')")
    d_model = _positive(_get(config, "hidden_size", int, where), "hidden_size", where)
    expand = _positive(_get(config, "expand", int, where, 2), "expand", where)
    headdim = _positive(_get(config, "head_dim", int, where, 64), "head_dim", where)
    _checked_heads(d_model, expand, headdim, where)
    heads = config.get("num_heads")
    if heads is not None and heads * headdim != expand * d_model:
        raise InputError(f"{where}: num_heads·head_dim = {heads}·{headdim} != expand·hidden_size = {expand * d_model}")
    eps = float(_get(config, "layer_norm_epsilon", float, where, 1e-5))
    lo, hi = _dt_limit(config.get("time_step_limit"), "time_step_limit", where)
    return _config(
        where,
        vocab_size=_positive(_get(config, "vocab_size", int, where), "vocab_size", where),
        d_model=d_model,
        n_layer=_positive(_get(config, "num_hidden_layers", int, where), "num_hidden_layers", where),
        d_state=_positive(_get(config, "state_size", int, where, 128), "state_size", where),
        d_conv=_positive(_get(config, "conv_kernel", int, where, 4), "conv_kernel", where),
        expand=expand,
        headdim=headdim,
        ngroups=_positive(_get(config, "n_groups", int, where, 8), "n_groups", where),
        conv_bias=_get(config, "use_conv_bias", bool, where, True),
        bias=_get(config, "use_bias", bool, where, False),
        norm_eps=eps,
        gated_norm_eps=eps,
        tie_embeddings=_get(config, "tie_word_embeddings", bool, where, False),
        dt_limit_min=lo,
        dt_limit_max=hi,
    )


def state_spaces_config_to_edgeseq(config: dict, where: Path) -> Mamba2Config:
    """A ``state-spaces/mamba2-*`` ``config.json`` as an edgeseq :class:`Mamba2Config` (vocab padded)."""
    ssm_cfg = config.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise InputError(f"{where}: 'ssm_cfg' must be an object")
    if ssm_cfg.get("layer") != "Mamba2":
        raise InputError(f"{where}: ssm_cfg.layer is {ssm_cfg.get('layer')!r}, expected 'Mamba2'")
    if config.get("d_intermediate", 0):
        raise InputError(f"{where}: d_intermediate > 0 (MLP blocks between mixers) is not supported")
    if config.get("attn_layer_idx"):
        raise InputError(f"{where}: attention layers (attn_layer_idx) are not supported")
    if not config.get("rms_norm", True):
        raise InputError(f"{where}: rms_norm is false (LayerNorm blocks), which edgeseq's Mamba-2 does not implement")
    if ssm_cfg.get("D_has_hdim", False):
        raise InputError(f"{where}: ssm_cfg.D_has_hdim (a D per channel) is not supported")
    if ssm_cfg.get("norm_before_gate", False):
        raise InputError(f"{where}: ssm_cfg.norm_before_gate is not supported (Mamba-2 gates before the norm)")
    if not ssm_cfg.get("rmsnorm", True):
        raise InputError(f"{where}: ssm_cfg.rmsnorm false (no gated norm) is not supported")
    d_model = _positive(_get(config, "d_model", int, where), "d_model", where)
    expand = _positive(_get(ssm_cfg, "expand", int, where, 2), "ssm_cfg.expand", where)
    d_ssm = ssm_cfg.get("d_ssm")
    if d_ssm is not None and d_ssm != expand * d_model:
        raise InputError(f"{where}: ssm_cfg.d_ssm {d_ssm} != expand·d_model (a gated MLP share of in_proj is not supported)")
    headdim = _positive(_get(ssm_cfg, "headdim", int, where, 64), "ssm_cfg.headdim", where)
    _checked_heads(d_model, expand, headdim, where)
    vocab = _positive(_get(config, "vocab_size", int, where), "vocab_size", where)
    multiple = _positive(_get(config, "pad_vocab_size_multiple", int, where, 8), "pad_vocab_size_multiple", where)
    lo, hi = _dt_limit(ssm_cfg.get("dt_limit"), "ssm_cfg.dt_limit", where)
    return _config(
        where,
        vocab_size=-(-vocab // multiple) * multiple,
        d_model=d_model,
        n_layer=_positive(_get(config, "n_layer", int, where), "n_layer", where),
        d_state=_positive(_get(ssm_cfg, "d_state", int, where, 128), "ssm_cfg.d_state", where),
        d_conv=_positive(_get(ssm_cfg, "d_conv", int, where, 4), "ssm_cfg.d_conv", where),
        expand=expand,
        headdim=headdim,
        ngroups=_positive(_get(ssm_cfg, "ngroups", int, where, 1), "ssm_cfg.ngroups", where),
        conv_bias=_get(ssm_cfg, "conv_bias", bool, where, True),
        bias=_get(ssm_cfg, "bias", bool, where, False),
        norm_eps=float(_get(config, "norm_epsilon", float, where, 1e-5)),
        gated_norm_eps=1e-5,
        tie_embeddings=_get(config, "tie_embeddings", bool, where, True),
        dt_limit_min=lo,
        dt_limit_max=hi,
    )


def _config(where: Path, **fields) -> Mamba2Config:
    try:
        return Mamba2Config(**fields)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------
# the two formats
# --------------------------------------------------------------------------------------------


def _load(path: Path, to_config, format_name: str) -> LoadedModel:
    folder = _folder_of(path)
    config_path = folder / HF_CONFIG
    cfg = to_config(read_json(config_path), config_path)
    tensors, weights_path = read_checkpoint_weights(folder)
    model = _build_and_fill(cfg, rename_to_edgeseq(tensors, cfg.tie_embeddings, weights_path), weights_path, Mamba2)
    return LoadedModel(model, _checked_tokenizer(folder, cfg), str(path), format_name, {"task": "lm"})


def detect_hf(path: Path) -> bool:
    config = _read_config_if_any(path)
    return config is not None and config.get("model_type") == "mamba2"


def load_hf(path: Path) -> LoadedModel:
    """A Hugging Face Mamba-2 folder (``config.json`` + safetensors, sharded safetensors or a .bin)."""
    return _load(path, hf_config_to_edgeseq, "hf-mamba2")


def detect_state_spaces(path: Path) -> bool:
    config = _read_config_if_any(path)
    return (config is not None and "model_type" not in config and {"d_model", "n_layer"} <= set(config)
            and isinstance(config.get("ssm_cfg"), dict) and config["ssm_cfg"].get("layer") == "Mamba2")


def load_state_spaces(path: Path) -> LoadedModel:
    """A ``state-spaces/mamba2-*`` folder (``config.json`` + ``pytorch_model.bin``)."""
    return _load(path, state_spaces_config_to_edgeseq, "state-spaces-mamba2")


HF_FORMAT = CheckpointFormat("hf-mamba2", detect_hf, load_hf)
STATE_SPACES_FORMAT = CheckpointFormat("state-spaces-mamba2", detect_state_spaces, load_state_spaces)


# --------------------------------------------------------------------------------------------
# the other way: edgeseq -> Hugging Face
# --------------------------------------------------------------------------------------------


def hf_config_dict(cfg: Mamba2Config) -> dict:
    """The ``config.json`` of :func:`save_hf` (fields ``transformers.Mamba2Config`` reads)."""
    return {
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "head_dim": cfg.headdim,
        "num_heads": cfg.nheads,
        "n_groups": cfg.ngroups,
        "use_conv_bias": cfg.conv_bias,
        "use_bias": cfg.bias,
        "layer_norm_epsilon": cfg.norm_eps,
        "hidden_act": "silu",
        "residual_in_fp32": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "time_step_limit": [cfg.dt_limit_min, cfg.dt_limit_max or float("inf")],
        "time_step_min": cfg.dt_min,
        "time_step_max": cfg.dt_max,
        "time_step_floor": cfg.dt_init_floor,
        "chunk_size": cfg.chunk_size,
    }


def save_hf(model: Mamba2, folder: str | Path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face Mamba-2 folder (``config.json`` + ``model.safetensors``)."""
    if not isinstance(model, Mamba2):
        raise InputError(f"save_hf writes Mamba-2 models only, got {type(model).__name__}")
    cfg = model.config
    if cfg.gated_norm_eps != cfg.norm_eps:
        raise InputError("Hugging Face Mamba-2 has one epsilon for both norms; this model's differ")
    return write_hf_folder(model, folder, hf_config_dict(cfg), tokenizer)


__all__ = [
    "HF_FORMAT",
    "STATE_SPACES_FORMAT",
    "hf_config_dict",
    "hf_config_to_edgeseq",
    "load_hf",
    "load_state_spaces",
    "save_hf",
    "state_spaces_config_to_edgeseq",
]
