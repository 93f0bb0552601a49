"""Saving and loading quantized models.

A quantized model folder holds

* ``model.safetensors`` — the state dict of the quantized model: ``weight_int`` (int8; 4-bit values
  one per byte), ``weight_scale``/``input_scale``/``scale`` (float32) of every quantized module, and
  the float rest (float16 when the recipe stores floats in half precision);
* ``quantization.json`` — the model family and config, the recipe, one spec per quantized module
  (enough to rebuild it empty), the calibration report (per-layer scales, clipping, errors) and
  the source model;
* ``tokenizer.json`` when the source model has a Hugging Face tokenizer.

Files are written atomically, ``quantization.json`` last: a folder with it is complete.
:func:`load_quantized` rebuilds the model without any calibration data; ``QUANTIZED_FORMAT``
plugs it into :func:`edgeseq.checkpoints.load_model` (so ``edgeseq eval QDIR`` works).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgeseq.checkpoints import (
    CheckpointFormat,
    register_format,
    LoadedModel,
    atomic_write,
    untie,
    load_state_into,
    read_json,
    read_safetensors,
)
from edgeseq.errors import InputError
from edgeseq.streaming import QuantizationRecord, quantization_of
from edgeseq.tokenizer import load_tokenizer
from quantize.modules import is_quantized_module, module_from_spec
from quantize.recipes import QuantRecipe, get_recipe

QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
_SCALE_NAMES = ("weight_scale", "input_scale", "scale")


def quantized_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Path -> spec of every quantized module in ``model``."""
    return {name: module.quant_spec() for name, module in model.named_modules() if is_quantized_module(module)}


def save_quantized(
    qmodel: nn.Module,
    folder: str | Path,
    recipe: str | QuantRecipe,
    report: dict[str, Any] | None = None,
    source: str = "",
    tokenizer: Any = None,
    source_meta: dict[str, Any] | None = None,
) -> Path:
    """Write a quantized model folder (see module docs) and return its path."""
    from safetensors.torch import save_file

    recipe = get_recipe(recipe)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another output path (-o)")
    if (folder / "edgeseq.json").is_file():
        raise InputError(f"{folder}: holds a float edgeseq checkpoint; write the quantized model to another folder (-o)")
    folder.mkdir(parents=True, exist_ok=True)
    modules = quantized_modules(qmodel)
    half = recipe.float_dtype == "float16"
    state: dict[str, Tensor] = {}
    for name, tensor in qmodel.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        if half and tensor.is_floating_point() and name.rpartition(".")[2] not in _SCALE_NAMES:
            tensor = tensor.half()
        state[name] = tensor
    header = {
        "format": "edgeseq-quantized",
        "format_version": FORMAT_VERSION,
        "family": qmodel.config.family,
        "config": qmodel.config.to_dict(),
        "recipe": recipe.to_dict(),
        "modules": modules,
        "embedding_bits": record.embedding_bits if (record := quantization_of(qmodel)) else 0,
        "source": str(source),
        "source_meta": source_meta or {},
        "tokenizer": tokenizer.to_dict() if tokenizer is not None and hasattr(tokenizer, "to_dict") else {"kind": "bytes"},
        "report": report or {},
    }
    if tokenizer is not None and getattr(tokenizer, "kind", "bytes") == "hf":
        shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
        header["tokenizer"] = {"kind": "hf", "path": "tokenizer.json"}
    elif (folder / "tokenizer.json").is_file() and (folder / QUANT_FILE).is_file():
        (folder / "tokenizer.json").unlink()  # an earlier quantization's: this model reads bytes
    # an earlier quantization's header goes first: killed half-way, the folder is incomplete (no
    # quantization.json), never new weights described by an old header
    (folder / QUANT_FILE).unlink(missing_ok=True)
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(untie(state), str(p), metadata={"format": "edgeseq-quantized"}))
    text = json.dumps(header, indent=2, default=_json_default) + "\n"
    atomic_write(folder / QUANT_FILE, lambda p: Path(p).write_text(text))
    return folder


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def read_header(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    header = read_json(folder / QUANT_FILE)
    for key in ("family", "config", "recipe", "modules"):
        if key not in header:
            raise InputError(f"{folder / QUANT_FILE}: missing {key!r}; was it written by `edgeseq quantize`?")
    if not isinstance(header["config"], dict) or not isinstance(header["modules"], dict):
        raise InputError(f"{folder / QUANT_FILE}: 'config' and 'modules' must be JSON objects; was it written by `edgeseq quantize`?")
    if not isinstance(header.get("format_version", 1), int):
        raise InputError(f"{folder / QUANT_FILE}: 'format_version' must be an integer")
    if header.get("format_version", 1) > FORMAT_VERSION:
        raise InputError(
            f"{folder / QUANT_FILE}: format version {header['format_version']} is newer than this edgeseq "
            f"reads ({FORMAT_VERSION}); upgrade edgeseq"
        )
    return header


def load_quantized(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a quantized model from its folder (no calibration data needed): ``(qmodel, header)``."""
    from edgeseq.models import build_model

    folder = Path(folder)
    header = read_header(folder)
    model = build_model(header["family"], header["config"])
    for path, spec in header["modules"].items():
        parent_path, _, name = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            if getattr(parent, name, 0) is not None:  # None: an empty slot (a tied LM head's own copy)
                model.get_submodule(path)
        except AttributeError:
            raise InputError(f"{folder / QUANT_FILE}: module {path!r} does not exist in a {header['family']} model") from None
        try:
            module = module_from_spec(spec)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{folder / QUANT_FILE}: bad spec for {path!r} ({exc})") from None
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, module)
    state_recipe = _state_recipe(header["recipe"], folder)
    if state_recipe is not None:  # an integer/half decode state: its scales are in the state dict (quantize.state)
        from quantize.state import attach_state_quant

        attach_state_quant(model, state_recipe)
    load_state_into(model, read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    bits = header.get("embedding_bits", 0)  # folders written before embeddings were quantized: float
    if not isinstance(bits, int) or bits not in (0, 2, 3, 4, 5, 6, 7, 8):
        raise InputError(f"{folder / QUANT_FILE}: embedding_bits must be 0 or 2..8, got {bits!r}")
    recipe_name = header["recipe"].get("name", "quantized") if isinstance(header["recipe"], dict) else str(header["recipe"])
    tables = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Embedding)) if bits else []
    model.quantization = QuantizationRecord(recipe=recipe_name, embedding_bits=bits, embedding_tables=tables,
                                            state_bits=state_recipe.state_bits if state_recipe is not None else 0)
    model.eval()
    return model, header


def _state_recipe(recipe: Any, folder: Path) -> QuantRecipe | None:
    """The recipe's decode-state fields as a QuantRecipe (None when the state stays float)."""
    if not isinstance(recipe, dict):
        return None
    keys = ("state_bits", "conv_state_bits", "ssm_state_bits", "state_scales", "state_percentile")
    fields = {k: recipe[k] for k in keys if k in recipe}
    try:
        state = QuantRecipe.from_dict({"name": "state", **fields})
    except (InputError, TypeError) as exc:
        raise InputError(f"{folder / QUANT_FILE}: bad decode-state fields in the recipe ({exc})") from None
    return state if state.changes_state else None


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's tensors: as stored here, and deployed (int weights packed to their bits)."""
    stored = packed = 0
    quantized = {name: module for name, module in model.named_modules() if is_quantized_module(module)}
    record = quantization_of(model)
    embedding_bits = record.embedding_bits if record else 0
    embeddings = {name for name, module in model.named_modules() if isinstance(module, nn.Embedding)} if embedding_bits else set()
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * tensor.element_size()
        stored += size
        owner, _, leaf = name.rpartition(".")
        module = quantized.get(owner)
        if leaf == "weight_int" and module is not None:
            size = (tensor.numel() * module.weight_bits + 7) // 8
        elif leaf == "weight" and owner in embeddings:  # integer rows + one float32 scale per row
            size = (tensor.numel() * embedding_bits + 7) // 8 + tensor.shape[0] * 4
        packed += size
    return {"stored": stored, "packed": packed}


def check_output(folder: str | Path, force: bool) -> None:
    """``edgeseq quantize -o DIR``: an existing DIR is replaced only with ``--force``, and only when
    it is an earlier quantized folder (or empty), never a folder of other files."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another output path (-o)")
    if not any(folder.iterdir()):
        return
    if (folder / "edgeseq.json").is_file():
        raise InputError(f"{folder}: holds a float edgeseq checkpoint; write the quantized model to another folder (-o)")
    if not force:
        raise InputError(f"{folder} already exists; pass --force to replace it")
    ours = {WEIGHTS_FILE, QUANT_FILE, "tokenizer.json"}
    # and the temp files of an interrupted atomic write (".model.safetensors.XXXX")
    names = {p.name for p in folder.iterdir() if not any(p.name.startswith(f".{n}.") for n in ours)}
    if not (folder / QUANT_FILE).is_file() or not names <= ours:
        raise InputError(f"{folder} holds files that are not an `edgeseq quantize` folder; --force replaces only an "
                         "earlier quantized folder or an empty folder: choose another output path (-o)")


def recorded_tokenizer(folder: Path, header: dict[str, Any]):
    """The tokenizer recorded at quantization time: a stray ``tokenizer.json`` copied into a folder
    of a byte-level model does not change how its text is encoded."""
    from edgeseq.tokenizer import ByteTokenizer, HFTokenizer

    record = header.get("tokenizer")
    if not isinstance(record, dict):  # folders written before the record: what the folder holds
        return load_tokenizer(folder)
    if record.get("kind", "bytes") == "bytes":
        return ByteTokenizer()
    name = record.get("path") or record.get("file") or "tokenizer.json"
    path = (folder / str(name)).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        raise InputError(f"{folder / QUANT_FILE}: the recorded tokenizer {name!r} is missing from the folder")
    return HFTokenizer(path)


def _detect(path: Path) -> bool:
    return path.is_dir() and (path / QUANT_FILE).is_file()


def _load(path: Path) -> LoadedModel:
    model, header = load_quantized(path)
    meta = {
        **header.get("source_meta", {}),  # the source model's dataset etc.: `edgeseq eval QDIR` uses its task
        "recipe": header["recipe"].get("name", ""),
        "recipe_spec": header["recipe"],
        "source": header.get("source", ""),
        "summary": header.get("report", {}).get("summary", {}),
    }
    return LoadedModel(model=model, tokenizer=recorded_tokenizer(path, header), source=str(path), format="quantized", meta=meta)


QUANTIZED_FORMAT = register_format(CheckpointFormat(name="quantized", detect=_detect, load=_load))

__all__ = ["QUANTIZED_FORMAT", "QUANT_FILE", "check_output", "recorded_tokenizer", "load_quantized", "model_bytes", "quantized_modules", "read_header", "save_quantized"]
