"""Loading and saving checkpoints, safely.

``load_model(source)`` accepts

* a zoo name (``edgeseq models`` lists them),
* an edgeseq folder (``edgeseq.json`` + ``model.safetensors``, written by :func:`save_model`),
* a foreign checkpoint folder or file, recognised by one of the registered formats
  (:func:`formats`: Hugging Face Mamba/Mamba-2, ``state-spaces/mamba``, official SpikeGPT and
  LMUFormer here; the packages above the core register theirs — ``quantize`` its quantized
  folders, ``export`` its artifacts — through the ``edgeseq.checkpoint_formats`` entry point
  group or :func:`register_format`, so this module never imports them),
* a Hugging Face hub id (``org/name``), downloaded through ``huggingface_hub`` when online.

Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``: no pickled code runs.
Every problem with a checkpoint is an :class:`InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from edgeseq.errors import InputError
from edgeseq.tokenizer import ByteTokenizer, load_tokenizer

CONFIG_FILE = "edgeseq.json"
WEIGHTS_FILE = "model.safetensors"
ZOO_DIR = Path(__file__).parent / "zoo"

# The core's foreign formats: name -> "module:attribute" of a CheckpointFormat (imported on first
# use). Each provides detect(path) -> bool (cheap: file names / config keys) and load(path) -> LoadedModel.
CORE_FORMATS: dict[str, str] = {
    "hf-mamba": "edgeseq.convert.mamba:HF_FORMAT",
    "state-spaces-mamba": "edgeseq.convert.mamba:STATE_SPACES_FORMAT",
    "hf-mamba2": "edgeseq.convert.mamba2:HF_FORMAT",
    "state-spaces-mamba2": "edgeseq.convert.mamba2:STATE_SPACES_FORMAT",
    "spikegpt-official": "edgeseq.convert.spikegpt:OFFICIAL_FORMAT",
    "lmuformer-official": "edgeseq.convert.lmuformer:OFFICIAL_FORMAT",
}


FORMAT_GROUP = "edgeseq.checkpoint_formats"  # entry points of packages that add formats


@dataclass
class CheckpointFormat:
    """A foreign checkpoint layout: how to recognise it and how to load it."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], "LoadedModel"]


_REGISTERED: dict[str, "CheckpointFormat | str"] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add a checkpoint format (packages above the core call this when imported)."""
    _REGISTERED[fmt.name] = fmt
    return fmt


def formats() -> dict[str, "CheckpointFormat | str"]:
    """Every known format, detection order: registered and entry-point formats (edgeseq's own
    folders: quantized, artifact) before the core's converters."""
    from importlib.metadata import entry_points

    found: dict[str, CheckpointFormat | str] = {}
    for point in entry_points(group=FORMAT_GROUP):
        found.setdefault(point.name, point.value)
    found.update(_REGISTERED)
    for name, where in CORE_FORMATS.items():
        found.setdefault(name, where)
    return found


@dataclass
class LoadedModel:
    model: Any  # StreamingModel
    tokenizer: Any = field(default_factory=ByteTokenizer)
    source: str = ""
    format: str = "edgeseq"
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# safe tensor readers
# --------------------------------------------------------------------------------------------


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file; a damaged file is a one-line InputError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ...
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(exc)}); is it truncated?") from None


def read_torch_weights(path: str | Path) -> dict[str, Tensor]:
    """A pickled state dict read with ``torch.load(weights_only=True)``: code in it never runs."""
    import pickle
    import warnings

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: keep stderr to one line
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{path}: refused to load: the pickle holds objects other than tensors{_unpickling_reason(exc)}; "
            f"only plain state dicts load (convert the checkpoint to safetensors)"
        ) from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); is it truncated?") from None
    for key in ("state_dict", "model", "module"):  # common wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


def _unpickling_reason(exc: BaseException) -> str:
    """The informative line of torch's weights-only refusal (e.g. the blocked global), if any."""
    import re

    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f" (it would call {found.group(1)})"
    found = re.search(r"Unsupported (operand|class)[^\n]*", text)
    return f" ({found.group(0).strip()})" if found else ""


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A weights file by extension: safetensors, or a weights-only torch pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_weights(path)


def read_folder_weights(folder: str | Path) -> dict[str, Tensor]:
    """Weights of a Hugging Face style folder: single or sharded safetensors, else a .bin."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except Exception as exc:
            raise InputError(f"{index}: not a valid safetensors index ({_first_line(exc)})") from None
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise InputError(f"{index}: shards lack {len(missing)} tensor(s), e.g. {missing[0]}")
        return tensors
    for name in ("pytorch_model.bin", "model.pt", "model.pth"):
        if (folder / name).is_file():
            return read_torch_weights(folder / name)
    raise InputError(f"{folder}: no weights found (model.safetensors, a sharded index or pytorch_model.bin)")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except Exception as exc:
        raise InputError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def load_state_into(model: torch.nn.Module, tensors: dict[str, Tensor], path: str | Path) -> None:
    """Copy ``tensors`` into ``model`` strictly; mismatches name the file and the tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise InputError(f"{path}: missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
    if unexpected:
        raise InputError(f"{path}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]!r}")
    cast = {}
    for name, value in tensors.items():
        want = expected[name]
        if tuple(value.shape) != tuple(want.shape):
            raise InputError(
                f"{path}: tensor {name!r} has shape {tuple(value.shape)}, the config needs {tuple(want.shape)}"
            )
        if want.is_floating_point() and not value.is_floating_point():
            # int64/bool weights would be cast to numbers nobody trained: refuse them
            raise InputError(f"{path}: tensor {name!r} is {str(value.dtype).replace('torch.', '')}; "
                             f"the model needs floating-point weights ({str(want.dtype).replace('torch.', '')})")
        value = value.to(want.dtype)
        # after the cast: float64 values beyond float32's range become Inf here
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: tensor {name!r} holds NaN or Inf"
                             f"{' after conversion to ' + str(want.dtype).replace('torch.', '') if tensors[name].dtype != want.dtype else ''}")
        cast[name] = value
    model.load_state_dict(cast, strict=True)


def safetensors_header(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``name -> (shape, dtype)`` from a ``.safetensors`` header, without reading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: (tuple(handle.get_slice(key).get_shape()), str(handle.get_slice(key).get_dtype()))
                    for key in handle.keys()}
    except Exception as exc:
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(exc)}); is it truncated?") from None


def build_checked(family: Any, config: Any, weights: Path, where: Path):
    """Build a model whose config matches the weights file, checked first on PyTorch's ``meta``
    device (no memory): a config asking for a model far larger than its weights (hundreds of GB)
    is refused before anything is allocated."""
    from edgeseq.models import MODEL_FAMILIES, build_model

    if not isinstance(family, str) or family not in MODEL_FAMILIES:
        raise InputError(f"{where}: 'family' must be one of {', '.join(MODEL_FAMILIES)}, got {family!r}")
    if not isinstance(config, dict):
        raise InputError(f"{where}: 'config' must be a JSON object of the model's settings, got {json.dumps(config)}")
    try:
        with torch.device("meta"):
            skeleton = build_model(family, config)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: bad config for {family} ({_first_line(exc)})") from None
    except Exception:  # a model that cannot be built on meta: the checks after loading still apply
        skeleton = None
    if skeleton is not None and weights.is_file():
        header = safetensors_header(weights)
        needed = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        config_values = sum(math.prod(shape) for shape in needed.values())
        stored_values = sum(math.prod(shape) for shape, _ in header.values())
        for name, shape in needed.items():
            if name in header and header[name][0] != shape:
                raise InputError(f"{weights}: tensor {name!r} has shape {header[name][0]}, the config in {where.name} "
                                 f"needs {shape}")
        if config_values > stored_values:
            raise InputError(f"{where}: the config describes {config_values:,} parameters but {weights.name} stores "
                             f"{stored_values:,}; the config does not belong to these weights")
    try:
        return build_model(family, config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: bad config for {family} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# the native format
# --------------------------------------------------------------------------------------------


def save_model(model, folder: str | Path, tokenizer=None, meta: dict | None = None) -> Path:
    """Write ``edgeseq.json`` (family + config + meta) and ``model.safetensors`` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = {"family": model.config.family, "config": model.config.to_dict(), "meta": meta or {}}
    if tokenizer is not None and getattr(tokenizer, "kind", "bytes") == "hf":
        import shutil

        shutil.copyfile(tokenizer.path, folder / "tokenizer.json")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(untie(state), str(p)))
    atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(header, indent=2) + "\n"))
    return folder


def untie(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses shared storage: give tied tensors their own copy."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: checkpoints are ordinary readable files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_native(folder: str | Path, source: str | None = None) -> LoadedModel:
    folder = Path(folder)
    header = read_json(folder / CONFIG_FILE)
    if "family" not in header or "config" not in header:
        raise InputError(f"{folder / CONFIG_FILE}: needs 'family' and 'config' keys")
    model = build_checked(header["family"], header["config"], folder / WEIGHTS_FILE, folder / CONFIG_FILE)
    load_state_into(model, read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    model.eval()
    return LoadedModel(model, load_tokenizer(folder), source or str(folder), "edgeseq", header.get("meta", {}))


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def zoo_names() -> list[str]:
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def safetensors_param_count(path: str | Path) -> int | None:
    """Number of values stored in a ``.safetensors`` file, read from its header only (no weights)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            total = 0
            for key in handle.keys():
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= size
                total += count
            return total
    except Exception:
        return None


def zoo_entries() -> list[dict]:
    """One row per zoo model: ``name``, ``family``, ``task``, ``params`` and what its meta records.

    Reads only ``edgeseq.json`` and the safetensors header, so listing is fast whatever the sizes.
    """
    from edgeseq.models import MODEL_FAMILIES, model_class

    rows = []
    for name in zoo_names():
        folder = ZOO_DIR / name
        try:
            header = json.loads((folder / CONFIG_FILE).read_text())
        except Exception as exc:
            rows.append({"name": name, "family": None, "task": None, "params": None,
                         "error": f"unreadable {CONFIG_FILE}: {_first_line(exc)}"})
            continue
        meta = header.get("meta") or {}
        family = header.get("family")
        task = meta.get("task")
        if task is None and family in MODEL_FAMILIES:
            try:
                task = model_class(family).task
            except Exception:  # that family's code is not available in this build
                task = None
        params = meta.get("params")
        if params is None:
            params = safetensors_param_count(folder / WEIGHTS_FILE)
        weights = folder / WEIGHTS_FILE
        rows.append({
            "name": name,
            "family": family,
            "task": task,
            "params": params,
            "dataset": meta.get("dataset"),
            "metrics": meta.get("metrics", {}),
            "file_bytes": weights.stat().st_size if weights.is_file() else None,
            "train_command": meta.get("train_command"),
            "path": str(folder),
        })
    return rows


def family_entries() -> list[dict]:
    """The registered model families: ``name``, ``task`` and whether their code is available."""
    from edgeseq.models import MODEL_FAMILIES, model_class

    rows = []
    for family in MODEL_FAMILIES:
        try:
            cls = model_class(family)
            rows.append({"name": family, "task": cls.task, "available": True, "doc": _doc_line(cls)})
        except (ImportError, AttributeError):
            rows.append({"name": family, "task": None, "available": False, "doc": ""})
    return rows


def _doc_line(obj: Any) -> str:
    """The first paragraph of a docstring as one line, without reST backticks."""
    paragraph = (obj.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines()).replace("``", "")


def model_info(loaded: LoadedModel) -> dict:
    """What ``edgeseq info`` shows: config, sizes, state spec, tokenizer, meta (JSON-able)."""
    model = loaded.model
    config = getattr(model, "config", None)
    info: dict[str, Any] = {
        "source": loaded.source,
        "format": loaded.format,
        "family": getattr(config, "family", None) or loaded.meta.get("family"),
        "task": getattr(model, "task", None) or loaded.meta.get("task"),
        "config": config.to_dict() if hasattr(config, "to_dict") else loaded.meta.get("config", {}),
    }
    if isinstance(model, torch.nn.Module):
        tensors = list(model.parameters()) + list(model.buffers())
        info["params"] = sum(p.numel() for p in model.parameters())
        info["model_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
        info["dtype"] = str(tensors[0].dtype).replace("torch.", "") if tensors else None
    specs = model.state_spec() if hasattr(model, "state_spec") else []
    # an exported artifact's runner lists its graph inputs (dicts, shape with the "batch" dimension)
    info["state_spec"] = [spec.to_dict() if hasattr(spec, "to_dict") else
                          {**spec, "shape": [d for d in spec["shape"] if isinstance(d, int)]} for spec in specs]
    info["state_bytes"] = sum(_spec_bytes(spec) for spec in specs)  # per sequence
    if hasattr(model, "quant_points"):
        info["quant_points"] = len(model.quant_points())
    tokenizer = loaded.tokenizer
    info["tokenizer"] = {**tokenizer.to_dict(), "vocab_size": getattr(tokenizer, "vocab_size", None)} if tokenizer else None
    info["meta"] = loaded.meta
    return info


def _spec_bytes(spec) -> int:
    if isinstance(spec, dict):  # an artifact's graph input: symbolic dimensions (batch) skipped
        shape, dtype = [d for d in spec["shape"] if isinstance(d, int)], getattr(torch, str(spec["dtype"]))
    else:
        shape, dtype = spec.shape, spec.dtype
    count = 1
    for size in shape:
        count *= int(size)
    return count * torch.empty((), dtype=dtype).element_size()


def _format(name: str) -> CheckpointFormat:
    where = formats()[name]
    if isinstance(where, CheckpointFormat):
        return where
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)


def detect_format(path: Path) -> str:
    if (path.is_dir() and (path / CONFIG_FILE).is_file()) or (path.name == WEIGHTS_FILE and (path.parent / CONFIG_FILE).is_file()):
        return "edgeseq"
    for name in formats():
        try:
            fmt = _format(name)
        except (ImportError, AttributeError):
            continue  # that family is not available in this build
        if fmt.detect(path):
            return name
    raise InputError(_unrecognised(path))


_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _unrecognised(path: Path) -> str:
    """Why ``path`` is not a checkpoint, as precisely as the files allow."""
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except Exception as exc:
            return f"{config}: not valid JSON ({_first_line(exc)})"
        if isinstance(data, dict) and "model_type" in data:
            kind = data["model_type"]
            return f"{config}: model_type is {kind!r}; edgeseq reads Mamba checkpoints (model_type 'mamba' or 'mamba2')"
        return f"{config}: not a config edgeseq knows (no model_type 'mamba', no state-spaces d_model/n_layer)"
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        # say why it was not recognised: refused as unsafe (a pickle that would run code), or a
        # plain state dict whose keys match none of the families
        try:
            tensors = read_torch_weights(path)
        except InputError as exc:
            return str(exc)
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        return (f"{path}: a PyTorch state dict ({len(tensors)} tensors, e.g. {sample}) whose keys match no known "
                f"checkpoint layout; pass --format (edgeseq, {', '.join(formats())}) or convert it with save_model")
    if path.is_dir() and any((path / n).is_file() for n in (*_WEIGHT_NAMES, WEIGHTS_FILE)):
        return (
            f"{path}: weights but no config: add config.json (Hugging Face / state-spaces) "
            f"or {CONFIG_FILE} (edgeseq, written by save_model)"
        )
    return (
        f"{path}: not a checkpoint edgeseq recognises (expected an edgeseq folder, a Hugging Face "
        f"Mamba folder, state-spaces/mamba, or an official SpikeGPT/LMUFormer weights file)"
    )


def load_model(source: str | Path, format: str | None = None) -> LoadedModel:
    """Load a model from a zoo name, a local folder/file, or a hub id (see module docs)."""
    source_str = str(source)
    if source_str in zoo_names():
        return load_native(ZOO_DIR / source_str, source=source_str)
    path = Path(source_str).expanduser()
    if path.exists():
        name = format or detect_format(path)
        if name == "edgeseq":
            return load_native(path if path.is_dir() else path.parent)
        if name not in formats():
            raise InputError(f"unknown checkpoint format {name!r}; known: edgeseq, {', '.join(formats())}")
        loaded = _format(name).load(path)
        loaded.model.eval()
        return loaded
    if _looks_like_hub_id(source_str) and not Path(source_str.split("/")[0]).expanduser().is_dir():
        return load_model(download_from_hub(source_str), format=format)
    if path.parent != Path(".") and path.parent.is_dir():  # a local folder that lacks this entry
        raise InputError(f"{source_str}: no such file or folder (in {path.parent}); check the path")
    known = ", ".join(zoo_names()) or "none"
    raise InputError(f"{source_str!r} is neither a zoo model ({known}) nor an existing path")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def download_from_hub(repo_id: str) -> Path:
    """Fetch a hub checkpoint's config, weights and tokenizer (online only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise InputError(f"{repo_id!r} looks like a hub id but huggingface_hub is missing: pip install huggingface_hub") from None
    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
            )
        )
    except Exception as exc:
        raise InputError(
            f"{repo_id!r} is not a local path, and fetching it as a Hugging Face hub id failed "
            f"({_first_line(exc)}); check the path, or go online for hub ids"
        ) from None


__all__ = [
    "CheckpointFormat",
    "CORE_FORMATS",
    "FORMAT_GROUP",
    "formats",
    "register_format",
    "LoadedModel",
    "detect_format",
    "family_entries",
    "model_info",
    "safetensors_param_count",
    "zoo_entries",
    "load_model",
    "load_native",
    "load_state_into",
    "read_folder_weights",
    "read_json",
    "read_safetensors",
    "read_torch_weights",
    "read_weights",
    "save_model",
    "zoo_names",
]
