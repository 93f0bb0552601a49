"""The one reader of exported artifacts: ``manifest.json``, its checks, and the graph files.

Every way of running an artifact — ``edgeseq run``, ``profile``, ``eval``, the export's own
verification, remote profiling — opens it through :func:`read_artifact`, which refuses, in one
line, a folder that

* has no ``manifest.json`` or one that is not an edgeseq manifest;
* has no passed verification record (an interrupted or failed export, a hand-made folder);
* names a file outside the folder (``../x.onnx``, an absolute path, a symlink out);
* names a file a runtime opens (a graph, a cubin, the tokenizer, the initial state, the reference
  stream) that is not listed with its sha256 in ``files``;
* holds a listed file whose size or sha256 differs from the record (an altered graph).

:mod:`export.manifest` writes the manifest; this module only reads it. ``NP_DTYPES`` is the one
table from the dtype names manifests use to numpy types.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseq.errors import InputError, require

MANIFEST = "manifest.json"
NP_DTYPES: dict[str, Any] = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8,
}


def np_dtype(name: str) -> Any:
    """The numpy type of a manifest dtype name; an unknown name is a one-line error."""
    try:
        return NP_DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise InputError(f"dtype {name!r} is not one an artifact's graphs use ({', '.join(NP_DTYPES)})") from None


def load_manifest_json(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(path, contents)`` of a folder's ``manifest.json``; a one-line InputError when it is
    missing, not JSON or not a JSON object. Callers check the keys they need."""
    path = Path(folder).expanduser() / MANIFEST
    if not path.is_file():
        raise InputError(f"{path.parent}: not an exported artifact (no {MANIFEST}); create one with `edgeseq export`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: must hold a JSON object")
    return path, manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """An edgeseq export manifest: :func:`load_manifest_json` plus the keys every artifact has."""
    path, manifest = load_manifest_json(folder)
    if "format" in manifest and (not isinstance(manifest.get("graphs"), dict) or not isinstance(manifest["graphs"].get("step"), dict)):
        raise InputError(f"{path}: 'graphs' names no step graph; re-export the artifact")
    for key in ("format", "graphs", "model", "files"):
        if key not in manifest:
            raise InputError(f"{path}: missing {key!r}; was it written by `edgeseq export`?")
    return manifest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entries(folder: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in files):
        raise InputError(f"{folder / MANIFEST}: 'files' must be a list of {{path, bytes, sha256}}; re-export the artifact")
    return files


def confined_path(folder: Path, relative: Any, key: str) -> Path:
    """``folder / relative`` when it stays inside ``folder`` (symlinks resolved); a manifest that
    points elsewhere (``../x.onnx``, an absolute path) is refused: it would run an unverified file."""
    if not isinstance(relative, str) or not relative:
        raise InputError(f"{folder / MANIFEST}: {key} holds {relative!r}, not a file name")
    root = Path(folder).resolve()
    candidate = Path(relative)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or (resolved != root and root not in resolved.parents):
        raise InputError(f"{folder / MANIFEST}: {key} points outside the artifact folder ({relative!r}); "
                         "every file of an artifact lives in its folder: re-export it")
    return resolved


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists inside ``folder`` with the recorded size and sha256."""
    for entry in _file_entries(folder, manifest):
        path = confined_path(folder, entry["path"], "files")
        if not path.is_file():
            raise InputError(f"{folder}: {entry['path']} is missing (the artifact is incomplete)")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise InputError(f"{path}: contents differ from manifest.json (sha256 mismatch); re-export the artifact")


def manifest_paths(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(key, path)`` of every file the manifest makes a runtime open (graphs, their shared weights,
    cubins, tokenizer, initial state, reference stream)."""
    found: list[tuple[str, Any]] = []
    graphs = manifest.get("graphs")
    if isinstance(graphs, dict):
        for kind, spec in graphs.items():
            if isinstance(spec, dict):
                for key in ("file", "cubin"):
                    if key in spec and spec[key] is not None:
                        found.append((f"graphs.{kind}.{key}", spec[key]))
    weights = manifest.get("weights")  # the graphs' shared external data
    if isinstance(weights, dict) and weights.get("file") is not None:
        found.append(("weights.file", weights["file"]))
    tokenizer = manifest.get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("file") is not None:
        found.append(("tokenizer.file", tokenizer["file"]))
    if manifest.get("init_state") is not None:
        found.append(("init_state", manifest["init_state"]))
    reference = manifest.get("reference")
    if isinstance(reference, dict) and reference.get("file") is not None:
        found.append(("reference.file", reference["file"]))
    return found


def verification_passed(manifest: dict[str, Any]) -> bool:
    record = manifest.get("verification")
    return isinstance(record, dict) and record.get("passed") is True


def check_manifest(folder: str | Path, manifest: dict[str, Any], *, require_verified: bool = True,
                   verify_files: bool = True) -> None:
    """What every artifact reader checks before it runs anything (see the module docs)."""
    folder = Path(folder)
    if require_verified and not verification_passed(manifest):
        raise InputError(f"{folder}: the manifest has no passed verification record (an interrupted or failed "
                         "export, or a folder not written by `edgeseq export`); re-export it")
    listed = {}
    for entry in _file_entries(folder, manifest):
        confined_path(folder, entry["path"], "files")
        listed[Path(entry["path"]).as_posix()] = entry
    for key, relative in manifest_paths(manifest):
        confined_path(folder, relative, key)
        entry = listed.get(Path(relative).as_posix())
        if entry is None or not entry.get("sha256"):
            raise InputError(f"{folder / MANIFEST}: {key} ({relative!r}) is not listed with its sha256 in 'files'; re-export it")
    if verify_files:
        check_files(folder, manifest)


@dataclass
class Artifact:
    """An exported artifact folder, checked (:func:`read_artifact`), as the runtimes see it."""

    folder: Path
    manifest: dict[str, Any]
    format: str  # onnx | tvm
    graphs: dict[str, Path] = field(default_factory=dict)  # step (and prefill) → file

    @property
    def step_file(self) -> Path:
        return self.graphs["step"]

    @property
    def prefill_file(self) -> Path | None:
        return self.graphs.get("prefill")

    def graph_spec(self, kind: str) -> dict[str, Any]:
        return self.manifest["graphs"][kind]

    @property
    def target(self) -> dict[str, Any]:
        target = self.manifest.get("target")
        return target if isinstance(target, dict) else {"name": target}

    @property
    def model_bytes(self) -> int:
        """Weight bytes a step reads: the manifest's ``weight_bytes`` when it records them, else
        the ONNX initializers, else the parameter count of a float export, else the file size."""
        recorded = self.manifest.get("weight_bytes")
        if isinstance(recorded, int) and recorded > 0:
            return recorded
        if self.format == "onnx":
            return onnx_weight_bytes(self.step_file)
        model = self.manifest.get("model") if isinstance(self.manifest.get("model"), dict) else {}
        recipe = str(self.manifest.get("recipe") or "")
        if isinstance(model.get("parameters"), int) and recipe in ("fp32", "fp16", "float32", "float16"):
            return model["parameters"] * (2 if "16" in recipe else 4)
        return self.step_file.stat().st_size

    def initial_state(self) -> dict[str, np.ndarray]:
        """One example's initial state per name for models whose start is not all zeros (``init_state.npz``)."""
        name = self.manifest.get("init_state")
        if not name:
            return {}
        with np.load(self.folder / name, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def read_artifact(folder: str | Path, *, require_verified: bool = True, verify_files: bool = True) -> Artifact:
    """Read and check an artifact folder (see the module docs). Only an export verifying its own
    staging folder passes ``require_verified=False``."""
    path, manifest = load_manifest_json(folder)
    folder = path.parent
    fmt = str(manifest.get("format", "")).lower()
    if fmt not in ("onnx", "tvm"):
        raise InputError(f"{path}: 'format' must be 'onnx' or 'tvm' (got {fmt!r})")
    manifest = read_manifest(folder)
    check_manifest(folder, manifest, require_verified=require_verified, verify_files=verify_files)
    graphs = {}
    for kind, spec in manifest["graphs"].items():
        graphs[kind] = confined_path(folder, spec.get("file") if isinstance(spec, dict) else None, f"graphs.{kind}.file")
        if not graphs[kind].is_file():
            raise InputError(f"{folder}: the {kind} graph {spec.get('file')!r} is missing (the artifact is incomplete)")
    return Artifact(folder, manifest, fmt, graphs)


def is_artifact(source: str | Path) -> bool:
    return (Path(source).expanduser() / MANIFEST).is_file()


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of the weights an ONNX graph reads per call: its initializers (external data included,
    from the sizes recorded in the graph), except tables only looked up row-wise (``Gather``
    inputs, e.g. an embedding whose head has its own copy), which a step reads one row of."""
    onnx = require("onnx", "pip install onnx")
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, set()).add(node.op_type if position == 0 else f"{node.op_type}:{position}")
    total = 0
    for tensor in proto.graph.initializer:
        if consumers.get(tensor.name) == {"Gather"}:
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in tensor.external_data}.get("length", 0))
        elif tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            try:
                total += numpy_helper.to_array(tensor).nbytes
            except Exception:  # an element type numpy lacks (int4): count packed nibbles
                count = 1
                for d in tensor.dims:
                    count *= d
                total += (count + 1) // 2
    return int(total)


__all__ = ["Artifact", "MANIFEST", "NP_DTYPES", "check_files", "check_manifest", "confined_path", "is_artifact",
           "load_manifest_json", "manifest_paths", "np_dtype", "onnx_weight_bytes", "read_artifact", "read_manifest",
           "sha256_file", "verification_passed"]
