"""Running an exported artifact on its own: ONNX Runtime or the TVM Relax VM.

``open_artifact(folder)`` reads ``manifest.json``, checks the files' sha256, and returns a
:class:`ArtifactRunner` that behaves like a streaming model for inference:

* ``task``, ``config``, ``family``, ``manifest``, ``state_names()``;
* ``init_state(batch) -> dict[str, Tensor]`` — zero state;
* ``step(x_t, state) -> (y_t, new_state)`` — one token/frame through the step graph;
* ``prefill(x, state=None) -> (y, state)`` — a prompt of any length: chunks of the exported
  prefill length through the prefill graph, the rest through the step graph;
* ``forward(x)`` — ``prefill`` from the zero state, outputs only;
* ``run_step(feed: dict[str, np.ndarray]) -> list[np.ndarray]`` — the raw call (profilers time this).

Tensors in and out are torch tensors (numpy arrays are accepted) so evaluators written for
``StreamingModel`` work unchanged. Nothing here imports PyTorch model code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from edgeseq.errors import EdgeseqError, InputError, require

MANIFEST = "manifest.json"
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "int8": np.int8}


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


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists inside ``folder`` with the recorded size and sha256."""
    for entry in _file_entries(folder, manifest):
        path = confined_path(folder, entry["path"], "files")
        if not path.is_file():
            raise InputError(f"{folder}: {entry['path']} is missing (the artifact is incomplete)")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise InputError(f"{path}: contents differ from manifest.json (sha256 mismatch); re-export the artifact")


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


def manifest_paths(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(key, path)`` of every file the manifest makes a runtime open (graphs, cubins, tokenizer,
    initial state)."""
    found: list[tuple[str, Any]] = []
    graphs = manifest.get("graphs")
    if isinstance(graphs, dict):
        for kind, spec in graphs.items():
            if isinstance(spec, dict):
                for key in ("file", "cubin"):
                    if key in spec and spec[key] is not None:
                        found.append((f"graphs.{kind}.{key}", spec[key]))
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
    """What every artifact reader checks before it runs anything:

    * a passed verification record (an export killed before it finished, or a hand-made folder,
      has none);
    * every path in the manifest resolves inside the folder and every file a runtime opens is
      listed in ``files`` with its sha256;
    * (``verify_files``) each listed file's size and sha256.
    """
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


class _Graph:
    """One compiled graph: ``call(list of arrays) -> list of arrays`` plus its I/O description."""

    def __init__(self, spec: dict[str, Any], call: Callable[[list[np.ndarray]], list[np.ndarray]]):
        self.spec = spec
        self.call = call
        self.input_names = [t["name"] for t in spec["inputs"]]
        self.output_names = [t["name"] for t in spec["outputs"]]
        self.input_dtypes = [_NP_DTYPES[t["dtype"]] for t in spec["inputs"]]


def ort_session(path: Path, threads: int | None = None, providers: list[str] | None = None,
                accuracy_level: int = 1):
    """An ONNX Runtime session for an edgeseq graph, configured as verification ran it.

    Profilers and runners must use the same settings as verification, or they measure another
    computation: ``accuracy_level`` 1 keeps float32 activations in fused MatMulNBits (the default,
    4, quantizes them to int8 on the fly: not what a w4a16 recipe means).
    """
    ort = require("onnxruntime", "pip install 'edgeseq[onnx]'")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:
        if "output_dtype" not in str(exc):
            raise EdgeseqError(f"{path}: ONNX Runtime cannot load this graph ({str(exc).strip()[:300]})") from None
        # onnxruntime 1.2x: on opset-21 graphs its QDQ propagation inserts QuantizeLinear nodes whose
        # output_dtype contradicts their zero point; the graph is valid without that optimization
        return ort.InferenceSession(str(path), options, providers=chosen, disabled_optimizers=["QDQPropagationTransformer"])

def _onnx_graph(
    path: Path, spec: dict[str, Any], threads: int | None, providers: list[str] | None, accuracy_level: int = 1
) -> _Graph:
    session = ort_session(path, threads, providers, accuracy_level)
    names = [t["name"] for t in spec["inputs"]]

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))

    graph = _Graph(spec, call)
    graph.session = session  # type: ignore[attr-defined]
    return graph


_CUBINS: dict[str, bytes] = {}  # sha256 of CUDA kernel source -> the cubin shipped for it
_CUBIN_CALLBACK: list[Any] = []


def register_cubins(folder: Path, graphs: dict[str, Any]) -> None:
    """Serve the artifact's ahead-of-time cubins to TVM's load-time CUDA compile callback.

    TVM 0.27 libraries carry CUDA source and ask ``tvm_callback_cuda_compile`` for a binary when
    they load (see :func:`export.tvm_build.write_cubin`); this answers with the shipped cubin
    when the source's sha256 matches, and defers to the previous callback otherwise.
    """
    import tvm_ffi

    for spec in graphs.values():
        if spec.get("cubin"):
            _CUBINS[spec["cuda_source_sha256"]] = (folder / spec["cubin"]).read_bytes()
    if _CUBIN_CALLBACK:
        return
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def serve(code):
        digest = hashlib.sha256(str(code).encode()).hexdigest()
        if digest in _CUBINS:
            return bytearray(_CUBINS[digest])
        if previous is None:
            raise RuntimeError("no shipped cubin matches this CUDA source and no CUDA compiler is registered")
        return previous(code)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", serve, override=True)
    _CUBIN_CALLBACK.append(serve)


def _tvm_graph(path: Path, spec: dict[str, Any], device: str) -> _Graph:
    tvm = require("tvm", "pip install 'edgeseq[tvm]' (apache-tvm)")
    from tvm import relax

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    try:
        library = tvm.runtime.load_module(str(path))
    except Exception as exc:
        raise EdgeseqError(f"{path}: the TVM runtime here cannot load this library ({str(exc).strip().splitlines()[-1][:200]})") from None
    vm = relax.VirtualMachine(library, dev)
    main = vm["main"]

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        outputs = main(*[tvm.runtime.tensor(np.ascontiguousarray(a), device=dev) for a in arrays])
        return [o.numpy() for o in outputs]

    graph = _Graph(spec, call)
    graph.vm = vm  # type: ignore[attr-defined]
    graph.device = dev  # type: ignore[attr-defined]
    return graph


class ArtifactRunner:
    """A streaming model backed by an exported artifact (see the module docs)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], graphs: dict[str, _Graph], runtime: str):
        from edgeseq.models import config_class

        self.folder = folder
        self.manifest = manifest
        self.graphs = graphs
        self.runtime = runtime
        model = manifest["model"]
        self.task = model["task"]
        self.family = model["family"]
        self.config = config_class(self.family).from_dict(model["config"])
        step = graphs["step"]
        self._state_specs = step.spec["inputs"][1:]
        self._initial: dict[str, Tensor] = {}
        if manifest.get("init_state"):
            with np.load(folder / manifest["init_state"], allow_pickle=False) as data:
                self._initial = {name: torch.from_numpy(data[name]) for name in data.files}
        self.prefill_length = int(manifest["graphs"].get("prefill", {}).get("length", 0)) if "prefill" in graphs else 0

    # -- the streaming-model surface -------------------------------------------------------
    def eval(self) -> "ArtifactRunner":
        return self

    def state_names(self) -> list[str]:
        return [s["name"] for s in self._state_specs]

    def state_spec(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self._state_specs]

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> dict[str, Tensor]:
        """The model's initial state (zeros, or the values the artifact ships in ``init_state.npz``)."""
        state = {}
        for s in self._state_specs:
            shape = (batch_size, *s["shape"][1:])
            dt = getattr(torch, s["dtype"])
            if s["name"] in self._initial:
                state[s["name"]] = self._initial[s["name"]].to(dt).unsqueeze(0).expand(shape).clone()
            else:
                state[s["name"]] = torch.zeros(shape, dtype=dt)
        return state

    def run_step(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One raw call of the step graph: inputs by name → outputs in manifest order."""
        graph = self.graphs["step"]
        return graph.call([feed[n] for n in graph.input_names])

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        graph = self.graphs["step"]
        outputs = graph.call(self._arrays(graph, x_t, state))
        return torch.from_numpy(outputs[0]), dict(zip(self.state_names(), map(torch.from_numpy, outputs[1:])))

    def prefill(self, x: Tensor, state: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.as_tensor(x)
        state = self.init_state(x.shape[0]) if state is None else state
        outputs = []
        start, length = 0, x.shape[1]
        if self.prefill_length:
            graph = self.graphs["prefill"]
            while length - start >= self.prefill_length:
                chunk = x[:, start : start + self.prefill_length]
                result = graph.call(self._arrays(graph, chunk, state))
                outputs.append(torch.from_numpy(result[0]))
                state = dict(zip(self.state_names(), map(torch.from_numpy, result[1:])))
                start += self.prefill_length
        for t in range(start, length):
            y_t, state = self.step(x[:, t], state)
            outputs.append(y_t.unsqueeze(1))
        if not outputs:
            raise InputError("prefill needs at least one token/frame")
        return torch.cat(outputs, dim=1), state

    def forward(self, x: Tensor) -> Tensor:
        return self.prefill(x)[0]

    __call__ = forward

    @property
    def vocab_size(self) -> int | None:
        outputs = self.graphs["step"].spec.get("outputs") or []
        shape = outputs[0].get("shape") if outputs else None
        if shape and isinstance(shape[-1], int):
            return shape[-1]
        return getattr(self.config, "vocab_size", None)

    def _check_ids(self, x: Any) -> None:
        """Token ids outside ``0..vocab-1`` are refused before the runtime call: ONNX ``Gather``
        wraps negative indices (id -1 would return the logits of the last token) where PyTorch raises."""
        ids = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if ids.size == 0:
            return
        if not np.issubdtype(ids.dtype, np.integer):
            if not np.all(np.mod(ids, 1) == 0):
                raise InputError(f"token ids must be integers, got {ids.dtype} values")
        vocab = self.vocab_size
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is outside the model's vocabulary (0..{(vocab or 0) - 1})")

    def _arrays(self, graph: _Graph, x: Any, state: dict[str, Tensor]) -> list[np.ndarray]:
        names = self.state_names()
        missing = [n for n in names if n not in state]
        if missing:
            raise InputError(f"state lacks {missing[0]!r}; use init_state() of this artifact")
        values = [x, *[state[n] for n in names]]
        if self.task == "lm":
            self._check_ids(x)
        arrays = []
        for value, dtype in zip(values, graph.input_dtypes):
            array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            arrays.append(np.ascontiguousarray(array.astype(dtype, copy=False)))
        return arrays


def open_artifact(
    folder: str | Path, threads: int | None = None, device: str = "cpu", providers: list[str] | None = None,
    verify_files: bool = True, require_verified: bool = True,
) -> ArtifactRunner:
    """Open an artifact written by ``edgeseq export`` for running (see the module docs).

    ``threads`` sets ONNX Runtime's intra-op threads; ``device`` is ``cpu`` or ``cuda`` (TVM CUDA
    builds); ``providers`` overrides ONNX Runtime's execution providers. The manifest must hold a
    passed verification record and confined, listed files (:func:`check_manifest`); only the
    export's own verification run opens its staging folder with ``require_verified=False``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_manifest(folder, manifest, require_verified=require_verified, verify_files=verify_files)
    fmt = manifest["format"]
    graphs: dict[str, _Graph] = {}
    for kind, spec in manifest["graphs"].items():
        path = confined_path(folder, spec.get("file") if isinstance(spec, dict) else None, f"graphs.{kind}.file")
        if fmt == "onnx":
            graphs[kind] = _onnx_graph(path, spec, threads, providers)
        elif fmt == "tvm":
            target = manifest.get("target", {})
            if target.get("cuda_arch") and device != "cuda":
                device = "cuda"
            if target.get("arch") not in (None, _host_arch()):
                raise InputError(
                    f"{folder}: built for {target.get('arch')} ({target.get('name')}); copy it to that device "
                    "and run it there with the TVM runtime"
                )
            if target.get("cuda_arch"):
                register_cubins(folder, manifest["graphs"])
            graphs[kind] = _tvm_graph(path, spec, device)
        else:
            raise InputError(f"{folder}: unknown artifact format {fmt!r} (onnx, tvm)")
    runtime = "onnxruntime" if fmt == "onnx" else f"tvm-{device}"
    runner = ArtifactRunner(folder, manifest, graphs, runtime)
    if verify_files and require_verified:  # proof on the device: the shipped reference stream, once per device (cached)
        from targets.selfcheck import check_on_device, torch_step_adapter

        check_on_device(folder, manifest, runtime, torch_step_adapter(runner, runner.state_names()))
    return runner


def _host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def write_reference(model, path: str | Path, steps: int = 32, batch: int = 1, seed: int = 0) -> None:
    """Inputs and PyTorch step outputs for a stream (``inputs``, ``outputs``, ``init_<state>``) as
    ``.npz``: lets a device without PyTorch model code check an artifact's numerics."""
    from export.graphs import sample_inputs

    inputs = sample_inputs(model, batch, steps, seed=seed)
    state = model.init_state(batch)
    arrays = {f"init_{k}": v.numpy() for k, v in state.items()}
    outputs = []
    with torch.no_grad():
        for t in range(steps):
            y, state = model.step(inputs[:, t], state)
            outputs.append(y)
    np.savez(path, inputs=inputs.numpy(), outputs=torch.stack(outputs, 1).numpy(), **arrays)


__all__ = ["ArtifactRunner", "MANIFEST", "check_files", "check_manifest", "confined_path", "verification_passed", "load_manifest_json", "open_artifact", "read_manifest", "register_cubins", "sha256_file", "write_reference"]
