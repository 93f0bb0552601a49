"""ONNX Runtime sessions that share one copy of the artifact's weights (the C API, through ctypes).

An artifact with a prefill graph runs two ONNX Runtime sessions over one ``weights.bin``. Through
the Python binding each session loads the weights and each pre-packs its own copy for its kernels
(``MatMulNBits`` and the integer matmuls repack every weight at load), so the weights sit in memory
twice, and a third time where a session keeps the raw tensor (130m w4a8-block: 415 MiB peak RSS for
a 115 MB artifact). ONNX Runtime can share both, but only through its C API, which the Python
binding does not expose: *shared initializers* (``AddInitializer``: one caller-owned buffer that
every session reads, never copied) and a *prepacked-weights container*
(``CreateSessionWithPrepackedWeightsContainer``: a kernel that packs a shared initializer the way
one in another session already did gets that session's packed buffer).

This module is that much of the C API, called through ``ctypes`` on the ``libonnxruntime`` shared
library that the ``onnxruntime`` wheel ships beside its Python binding — the same ONNX Runtime
build, version and kernels. :class:`SharedWeights` maps each external-data file once (read-only,
pages read on demand), and
:class:`CapiSession` has the subset of ``onnxruntime.InferenceSession`` that
``targets.runtimes.OnnxRuntime`` uses (``run``, ``io_binding``/``run_with_iobinding``, input and
output names), so the runtime's code is the same over either binding.

Weights that a kernel pre-packs are read once at load and then only through the packed copy; the
mapping's pages are dropped while and after a session loads (``madvise(MADV_DONTNEED)`` from a
thread: on a read-only file mapping a dropped page is read again from the page cache if touched),
so the raw and the packed copy are not both resident. A table the graphs only look rows up in
(an embedding: every reader a ``Gather`` on axis 0 indexed by a graph input) is a
:class:`RowTable` instead: an anonymous buffer into which each row is read from the file before
the first run that gathers it, so only the rows of tokens seen are resident.

The C API's function table (``OrtApi``) only ever grows, so a function's index never changes; the
indices below were counted from ``onnxruntime_c_api.h`` (API version 13, ONNX Runtime 1.13) and
every function used exists since then. :func:`available` asks the library for that API version,
and :class:`CapiSession` is used only where it answers (``EDGESEQ_ORT_CAPI=0`` turns it off).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeseq.errors import EdgeseqError
from targets.hostinfo import host_arch

API_VERSION = 13  # the header the indices were counted from; any newer library serves it

# index of each function in ``struct OrtApi`` (0-based; onnxruntime_c_api.h, ORT_API_VERSION 13)
_INDEX: dict[str, int] = {
    "GetErrorMessage": 2,
    "CreateEnv": 3,
    "Run": 9,
    "CreateSessionOptions": 10,
    "SetOptimizedModelFilePath": 11,
    "EnableMemPattern": 16,
    "DisableMemPattern": 17,
    "DisableCpuMemArena": 19,
    "SetSessionLogSeverityLevel": 22,
    "SetIntraOpNumThreads": 24,
    "SetInterOpNumThreads": 25,
    "SessionGetInputCount": 30,
    "SessionGetOutputCount": 31,
    "SessionGetOverridableInitializerCount": 32,
    "SessionGetInputName": 36,
    "SessionGetOutputName": 37,
    "SessionGetOverridableInitializerName": 38,
    "CreateTensorWithDataAsOrtValue": 49,
    "GetTensorMutableData": 51,
    "GetTensorElementType": 60,
    "GetDimensionsCount": 61,
    "GetDimensions": 62,
    "GetTensorTypeAndShape": 65,
    "CreateCpuMemoryInfo": 69,
    "AllocatorFree": 76,
    "GetAllocatorWithDefaultOptions": 78,
    "ReleaseEnv": 92,
    "ReleaseStatus": 93,
    "ReleaseMemoryInfo": 94,
    "ReleaseSession": 95,
    "ReleaseValue": 96,
    "ReleaseTensorTypeAndShapeInfo": 99,
    "ReleaseSessionOptions": 100,
    "AddSessionConfigEntry": 130,
    "CreateAndRegisterAllocator": 144,
    "AddInitializer": 150,
    "CreateArenaCfg": 156,
    "ReleaseArenaCfg": 157,
    "CreatePrepackedWeightsContainer": 166,
    "ReleasePrepackedWeightsContainer": 167,
    "CreateSessionWithPrepackedWeightsContainer": 168,
}

# ONNX TensorProto data types (ONNX Runtime's ONNXTensorElementDataType uses the same numbers)
_NP_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
             9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
_ONNX_TYPES = {np.dtype(v): k for k, v in _NP_TYPES.items()}

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)


# --------------------------------------------------------------------------------------------
# the external initializers of an ONNX file (the protobuf wire format, read directly)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str
    offset: int
    length: int


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message; a length-delimited value is a
    memoryview, the others ints (fixed-width ones are skipped as 0)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = 0, pos + 8
        elif wire == 5:
            value, pos = 0, pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield number, wire, value


def external_tensors(onnx_path: str | Path) -> list[ExternalTensor]:
    """The main graph's initializers stored as external data (name, type, shape, file, offset,
    length), read from the ONNX file without the ``onnx`` package (whose import alone costs a
    runtime process 17 MiB): ModelProto.graph (7) → GraphProto.initializer (5) → TensorProto
    dims (1), data_type (2), name (8), external_data (13: key 1, value 2), data_location (14)."""
    data = memoryview(Path(onnx_path).read_bytes())
    found: list[ExternalTensor] = []
    for number, wire, graph in _fields(data):
        if number != 7 or wire != 2:
            continue
        for field, kind, tensor in _fields(graph):
            if field != 5 or kind != 2:
                continue
            dims: list[int] = []
            name, dtype, external, location = "", 0, {}, 0
            for f, w, v in _fields(tensor):
                if f == 1:
                    if w == 2:  # packed
                        p = 0
                        while p < len(v):
                            d, p = _varint(v, p)
                            dims.append(d)
                    else:
                        dims.append(v)
                elif f == 2:
                    dtype = v
                elif f == 8:
                    name = bytes(v).decode()
                elif f == 13:
                    entry = {k: bytes(x).decode() for k, _, x in _fields(v) if k in (1, 2)}
                    external[entry.get(1, "")] = entry.get(2, "")
                elif f == 14:
                    location = v
            if location == 1 and "location" in external:
                found.append(ExternalTensor(name, dtype, tuple(dims), external["location"],
                                            int(external.get("offset", 0)), int(external.get("length", -1))))
    return found


def _node_fields(node: memoryview) -> tuple[list[str], str, int | None, list[memoryview]]:
    """A NodeProto's inputs (1), op_type (4), its ``axis`` attribute (5: AttributeProto name 1,
    i 3) and the subgraphs its attributes hold (AttributeProto g 6, graphs 11)."""
    inputs: list[str] = []
    op, axis, graphs = "", None, []
    for f, w, v in _fields(node):
        if f == 1 and w == 2:
            inputs.append(bytes(v).decode())
        elif f == 4 and w == 2:
            op = bytes(v).decode()
        elif f == 5 and w == 2:
            name, value = "", None
            for af, aw, av in _fields(v):
                if af == 1 and aw == 2:
                    name = bytes(av).decode()
                elif af == 3 and aw == 0:
                    value = av - (1 << 64) if av >= 1 << 63 else av
                elif af in (6, 11) and aw == 2:
                    graphs.append(av)
            if name == "axis":
                axis = value
    return inputs, op, axis, graphs


def _subgraph_inputs(graph: memoryview, names: set[str]) -> None:
    """Every name a node of ``graph`` (or of a graph nested in it) reads, added to ``names``."""
    for f, w, node in _fields(graph):
        if f == 1 and w == 2:
            inputs, _, _, graphs = _node_fields(node)
            names.update(inputs)
            for g in graphs:
                _subgraph_inputs(g, names)


def row_lookups(onnx_path: str | Path) -> dict[str, frozenset[str] | None]:
    """For each name the main graph's nodes read: the graph inputs that index it when every node
    reading it is a ``Gather`` on axis 0 whose indices are a graph input (an embedding table
    looked up by token ids), else None. GraphProto node (1), input (11: ValueInfoProto name 1)."""
    data = memoryview(Path(onnx_path).read_bytes())
    reads: dict[str, set[str] | None] = {}
    graph_inputs: set[str] = set()
    gathers: list[tuple[str, str]] = []
    for number, wire, graph in _fields(data):
        if number != 7 or wire != 2:
            continue
        for field, kind, value in _fields(graph):
            if field == 11 and kind == 2:
                graph_inputs.update(bytes(v).decode() for f, w, v in _fields(value) if f == 1 and w == 2)
            elif field == 1 and kind == 2:
                inputs, op, axis, graphs = _node_fields(value)
                if op == "Gather" and len(inputs) == 2 and (axis or 0) == 0:
                    gathers.append((inputs[0], inputs[1]))
                    inputs = inputs[1:]
                for name in inputs:
                    reads[name] = None
                nested: set[str] = set()
                for g in graphs:
                    _subgraph_inputs(g, nested)
                for name in nested:
                    reads[name] = None
    lookups: dict[str, frozenset[str] | None] = {}
    for table, ids in gathers:
        if table in reads or ids not in graph_inputs or lookups.get(table, frozenset()) is None:
            lookups[table] = None
        else:
            lookups[table] = lookups.get(table, frozenset()) | {ids}
    for name in reads:
        lookups.setdefault(name, None)
    return lookups


# --------------------------------------------------------------------------------------------
# the C API
# --------------------------------------------------------------------------------------------


class _ApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.CFUNCTYPE(_P, ctypes.c_uint32)), ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]


_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # name: (return type, argument types); OrtStatus* returns are c_void_p
    "GetErrorMessage": (ctypes.c_char_p, (_P,)),
    "ReleaseStatus": (None, (_P,)),
    "CreateEnv": (_P, (ctypes.c_int, ctypes.c_char_p, _PP)),
    "ReleaseEnv": (None, (_P,)),
    "CreateSessionOptions": (_P, (_PP,)),
    "ReleaseSessionOptions": (None, (_P,)),
    "SetIntraOpNumThreads": (_P, (_P, ctypes.c_int)),
    "SetInterOpNumThreads": (_P, (_P, ctypes.c_int)),
    "EnableMemPattern": (_P, (_P,)),
    "DisableMemPattern": (_P, (_P,)),
    "DisableCpuMemArena": (_P, (_P,)),
    "SetSessionLogSeverityLevel": (_P, (_P, ctypes.c_int)),
    "SetOptimizedModelFilePath": (_P, (_P, ctypes.c_char_p)),
    "AddSessionConfigEntry": (_P, (_P, ctypes.c_char_p, ctypes.c_char_p)),
    "AddInitializer": (_P, (_P, ctypes.c_char_p, _P)),
    "CreateArenaCfg": (_P, (ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, _PP)),
    "ReleaseArenaCfg": (None, (_P,)),
    "CreateAndRegisterAllocator": (_P, (_P, _P, _P)),
    "CreatePrepackedWeightsContainer": (_P, (_PP,)),
    "ReleasePrepackedWeightsContainer": (None, (_P,)),
    "CreateSessionWithPrepackedWeightsContainer": (_P, (_P, ctypes.c_char_p, _P, _P, _PP)),
    "ReleaseSession": (None, (_P,)),
    "SessionGetInputCount": (_P, (_P, ctypes.POINTER(ctypes.c_size_t))),
    "SessionGetOutputCount": (_P, (_P, ctypes.POINTER(ctypes.c_size_t))),
    "SessionGetOverridableInitializerCount": (_P, (_P, ctypes.POINTER(ctypes.c_size_t))),
    "SessionGetInputName": (_P, (_P, ctypes.c_size_t, _P, ctypes.POINTER(ctypes.c_char_p))),
    "SessionGetOutputName": (_P, (_P, ctypes.c_size_t, _P, ctypes.POINTER(ctypes.c_char_p))),
    "SessionGetOverridableInitializerName": (_P, (_P, ctypes.c_size_t, _P, ctypes.POINTER(ctypes.c_char_p))),
    "GetAllocatorWithDefaultOptions": (_P, (_PP,)),
    "AllocatorFree": (_P, (_P, _P)),
    "CreateCpuMemoryInfo": (_P, (ctypes.c_int, ctypes.c_int, _PP)),
    "ReleaseMemoryInfo": (None, (_P,)),
    "CreateTensorWithDataAsOrtValue": (_P, (_P, _P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                            ctypes.c_int, _PP)),
    "ReleaseValue": (None, (_P,)),
    "GetTensorMutableData": (_P, (_P, _PP)),
    "GetTensorTypeAndShape": (_P, (_P, _PP)),
    "ReleaseTensorTypeAndShapeInfo": (None, (_P,)),
    "GetTensorElementType": (_P, (_P, ctypes.POINTER(ctypes.c_int))),
    "GetDimensionsCount": (_P, (_P, ctypes.POINTER(ctypes.c_size_t))),
    "GetDimensions": (_P, (_P, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t)),
    "Run": (_P, (_P, _P, ctypes.POINTER(ctypes.c_char_p), _PP, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p),
                 ctypes.c_size_t, _PP)),
}


class _Api:
    """The C API's functions by name, each checked: a returned ``OrtStatus`` becomes an error."""

    def __init__(self, library: str):
        self.library = ctypes.CDLL(library)
        self.library.OrtGetApiBase.restype = ctypes.POINTER(_ApiBase)
        self.base = self.library.OrtGetApiBase()
        base = self.base.contents
        self.version = base.GetVersionString().decode()
        table = base.GetApi(API_VERSION)
        if not table:
            raise OSError(f"ONNX Runtime {self.version} does not serve C API version {API_VERSION}")
        slots = ctypes.cast(table, ctypes.POINTER(ctypes.c_void_p))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = ctypes.CFUNCTYPE(restype, *argtypes)(slots[_INDEX[name]])
            setattr(self, "_" + name, fn)
        env = ctypes.c_void_p()
        self.check(self._CreateEnv(3, b"edgeseq", ctypes.byref(env)))  # 3: errors only
        self.env = env
        info = ctypes.c_void_p()
        self.check(self._CreateCpuMemoryInfo(0, 0, ctypes.byref(info)))  # OrtDeviceAllocator, OrtMemTypeDefault
        self.cpu = info
        allocator = ctypes.c_void_p()
        self.check(self._GetAllocatorWithDefaultOptions(ctypes.byref(allocator)))
        self.allocator = allocator
        self.shared_arena = self._register_arena()

    def _register_arena(self) -> bool:
        """One CPU memory arena for every session of this process (``session.use_env_allocators``),
        grown by what is asked (not to the next power of two): a stream's step and prefill sessions
        then hold one arena the size of the larger of their peaks, not one each."""
        config, info = ctypes.c_void_p(), ctypes.c_void_p()
        try:
            self.check(self._CreateArenaCfg(0, 1, -1, -1, ctypes.byref(config)))  # 1: kSameAsRequested
            self.check(self._CreateCpuMemoryInfo(1, 0, ctypes.byref(info)))  # OrtArenaAllocator
            self.check(self._CreateAndRegisterAllocator(self.env, info, config))
            return True
        except EdgeseqError:
            return False
        finally:
            if config:
                self._ReleaseArenaCfg(config)
            if info:
                self._ReleaseMemoryInfo(info)

    def register_custom_ops(self, options: ctypes.c_void_p, library: str | Path) -> None:
        """Add the custom ops of ``library`` to a session's options: its ``RegisterCustomOps`` called
        with them, as ONNX Runtime's ``RegisterCustomOpsLibrary`` does (the library stays loaded for
        the life of the process, as sessions need)."""
        register = custom_ops_entry(library)
        self.check(register(options, ctypes.cast(self.base, ctypes.c_void_p)))

    def check(self, status: Any) -> None:
        if status:
            message = self._GetErrorMessage(status).decode(errors="replace")
            self._ReleaseStatus(status)
            raise EdgeseqError(message.strip().splitlines()[0][:300] if message.strip() else "ONNX Runtime failed")

    def __getattr__(self, name: str) -> Any:  # checked calls: api.Run(...) raises on a status
        fn = self.__dict__.get("_" + name)
        if fn is None:
            raise AttributeError(name)
        restype = _SIGNATURES[name][0]
        if restype is _P:
            return lambda *args: self.check(fn(*args))
        return fn

    def tensor(self, array: np.ndarray) -> ctypes.c_void_p:
        """An OrtValue over ``array``'s memory, never a copy; the caller keeps the array alive while
        the value is in use and releases the value."""
        if array.dtype not in _ONNX_TYPES:
            raise EdgeseqError(f"ONNX Runtime's C API here takes no {array.dtype} tensors")
        return self.tensor_at(array.ctypes.data, array.shape, _ONNX_TYPES[array.dtype])

    def tensor_at(self, address: int, shape: Sequence[int], data_type: int) -> ctypes.c_void_p:
        shape = tuple(int(d) for d in shape)
        dims = (ctypes.c_int64 * max(1, len(shape)))(*shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NP_TYPES[data_type]).itemsize
        value = ctypes.c_void_p()
        self.CreateTensorWithDataAsOrtValue(self.cpu, ctypes.c_void_p(address), nbytes, dims, len(shape), data_type,
                                            ctypes.byref(value))
        return value

    def to_numpy(self, value: ctypes.c_void_p) -> np.ndarray:
        """A copy of an ONNX Runtime-allocated tensor."""
        info = ctypes.c_void_p()
        self.GetTensorTypeAndShape(value, ctypes.byref(info))
        try:
            kind, count = ctypes.c_int(), ctypes.c_size_t()
            self.GetTensorElementType(info, ctypes.byref(kind))
            self.GetDimensionsCount(info, ctypes.byref(count))
            dims = (ctypes.c_int64 * max(1, count.value))()
            self.GetDimensions(info, dims, count.value)
        finally:
            self._ReleaseTensorTypeAndShapeInfo(info)
        shape = tuple(dims[i] for i in range(count.value))
        dtype = np.dtype(_NP_TYPES[kind.value])
        data = ctypes.c_void_p()
        self.GetTensorMutableData(value, ctypes.byref(data))
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size == 0:
            return np.empty(shape, dtype)
        raw = (ctypes.c_char * size).from_address(data.value)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


# edgeseq's fused CPU kernels (``edgeseq.ops``: export/kernels/edgeseq_ops.c), built into an artifact
# that uses them beside its graphs, one library per CPU architecture (export.fused_ops)
FUSED_OPS_DOMAIN = b"edgeseq.ops"


def fused_ops_library(arch: str) -> str:
    """File name of the fused kernels built for ``arch`` (``x86_64``, ``aarch64``)."""
    return f"edgeseq_ops-{arch}.so"


def custom_ops_library(path: str | Path) -> Path | None:
    """The custom-op library a graph needs registered before a session opens it: for a graph that
    uses ``edgeseq.ops`` nodes, the artifact's build of the fused kernels for this CPU; else None."""
    path = Path(path)
    try:
        uses = FUSED_OPS_DOMAIN in path.read_bytes()
    except OSError:  # unreadable: ONNX Runtime says why
        return None
    if not uses:
        return None
    library = path.parent / fused_ops_library(host_arch())
    if not library.is_file():
        built = sorted(p.name for p in path.parent.glob(fused_ops_library("*")))
        raise EdgeseqError(f"{path}: the graph runs edgeseq's fused kernels, and the artifact has no {library.name} "
                           f"for this {host_arch()} CPU (it has: {', '.join(built) or 'none'}); export it with the "
                           f"compiler for {host_arch()} at hand, or with --no-fused-ops")
    return library


_API: list[_Api | None] = []
_API_LOCK = threading.Lock()
_CUSTOM_OPS: dict[str, Any] = {}


def custom_ops_entry(library: str | Path) -> Any:
    """``RegisterCustomOps(options, api_base)`` of a custom-op library, loaded once per process."""
    key = str(Path(library).resolve())
    with _API_LOCK:
        if key not in _CUSTOM_OPS:
            try:
                loaded = ctypes.CDLL(key)
                register = loaded.RegisterCustomOps
            except (OSError, AttributeError) as exc:
                raise EdgeseqError(f"cannot load the custom-op library {library}: {str(exc).strip()[:200]}") from None
            register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
            _CUSTOM_OPS[key] = (loaded, register)
        return _CUSTOM_OPS[key][1]


def fused_ops_loops(library: str | Path) -> str | None:
    """Which of its ISA passes the fused-kernel library runs on this CPU (``avx2``, ``baseline``);
    None for a library built before it could say."""
    custom_ops_entry(library)  # loads it, once per process
    loaded = _CUSTOM_OPS[str(Path(library).resolve())][0]
    query = getattr(loaded, "EdgeseqOpsLoops", None)
    if query is None:
        return None
    query.restype, query.argtypes = ctypes.c_char_p, []
    return query().decode()


def _library_path() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        capi = Path(folder) / "capi"
        for candidate in sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib")):
            return str(candidate)
    return None


def api() -> _Api | None:
    """The C API of the installed ONNX Runtime, or None where it cannot be used here."""
    with _API_LOCK:
        if not _API:
            loaded = None
            if os.environ.get("EDGESEQ_ORT_CAPI", "1") != "0" and _INDEX:
                path = _library_path()
                if path is not None:
                    try:
                        loaded = _Api(path)
                    except (OSError, AttributeError, EdgeseqError):
                        loaded = None
            _API.append(loaded)
        return _API[0]


def available() -> bool:
    return api() is not None


# --------------------------------------------------------------------------------------------
# shared weights and sessions
# --------------------------------------------------------------------------------------------


class RowTable:
    """An external table that the graphs only look rows up in (an embedding gathered by token ids),
    held in an anonymous mapping of its size into which each row is read from the file (``pread``)
    before the first run that gathers it. Rows never looked up are never resident: mapping the
    file instead, one looked-up row maps the page cache's whole folio around it (up to 2 MiB on
    ext4), and a 128-token prompt made a 130m model's 38.6 MB table resident."""

    def __init__(self, path: Path, tensor: ExternalTensor):
        self.tensor = tensor
        self.rows = tensor.dims[0]
        self.row_bytes = tensor.length // self.rows
        self.buffer = mmap.mmap(-1, tensor.length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            self.buffer.madvise(mmap.MADV_NOHUGEPAGE)  # a 4 KiB page per row touched, not 2 MiB
        except (AttributeError, OSError, ValueError):
            pass
        self.view = memoryview(self.buffer)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self.filled = np.zeros(self.rows, dtype=bool)
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.path = path
        self._lock = threading.Lock()

    @staticmethod
    def fits(tensor: ExternalTensor) -> bool:
        itemsize = np.dtype(_NP_TYPES[tensor.data_type]).itemsize
        return (len(tensor.dims) >= 1 and tensor.dims[0] > 0
                and int(np.prod(tensor.dims, dtype=np.int64)) * itemsize == tensor.length)

    def _read(self, start: int, stop: int) -> None:
        a, b = start * self.row_bytes, stop * self.row_bytes
        while a < b:
            if hasattr(os, "preadv"):
                n = os.preadv(self.fd, [self.view[a:b]], self.tensor.offset + a)
            else:  # (no preadv: read, then copy)
                data = os.pread(self.fd, b - a, self.tensor.offset + a)
                n = len(data)
                self.view[a:a + n] = data
            if n <= 0:
                raise EdgeseqError(f"{self.path.name}: {self.tensor.name} lies past the end of the file")
            a += n

    def ensure(self, ids: Any) -> None:
        """Read the rows ``ids`` index (ONNX ``Gather``: a negative index counts from the end) that
        are not in memory yet; indices out of range are left to the graph to refuse."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            return
        flat = ids.reshape(-1)
        if flat.size == 1:  # a decode step: one token, usually a row read before
            r = int(flat[0])
            r += self.rows if r < 0 else 0
            if 0 <= r < self.rows and self.filled[r]:
                return
        flat = flat.astype(np.int64)
        flat = np.where(flat < 0, flat + self.rows, flat)
        flat = flat[(flat >= 0) & (flat < self.rows)]
        with self._lock:
            for r in np.unique(flat[~self.filled[flat]]).tolist():
                self._read(r, r + 1)
                self.filled[r] = True

    def fill_all(self) -> None:
        """Read the whole table (a graph reads it other than row by row)."""
        with self._lock:
            if not self.filled.all():
                self._read(0, self.rows)
                self.filled[:] = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SharedWeights:
    """The external-data files of an artifact's graphs, each mapped once read-only, with one
    OrtValue per external initializer over the mapping, and one prepacked-weights container:
    every session opened with :meth:`options` reads the same bytes and shares packed copies."""

    MIN_BYTES = 1 << 16  # smaller tensors stay embedded per session (ONNX Runtime loads them itself)
    ROWS_MIN_BYTES = 1 << 20  # a table looked up by rows from this size on is a RowTable

    def __init__(self, folder: str | Path):
        self.api = api()
        if self.api is None:
            raise EdgeseqError("ONNX Runtime's C API is not available here")
        self.folder = Path(folder)
        self.maps: dict[str, tuple[mmap.mmap, np.ndarray]] = {}
        self.values: dict[str, tuple[ExternalTensor, ctypes.c_void_p]] = {}
        self.tables: dict[str, RowTable] = {}
        container = ctypes.c_void_p()
        self.api.CreatePrepackedWeightsContainer(ctypes.byref(container))
        self.container = container
        self._lock = threading.Lock()

    def _mapping(self, location: str) -> np.ndarray:
        if location not in self.maps:
            path = (self.folder / location).resolve()
            if self.folder.resolve() not in path.parents:
                raise EdgeseqError(f"{location}: external data outside the artifact folder")
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
            # rows of an embedding table are looked up at random: no read-ahead around them, no
            # huge pages. (Pages the page cache already holds in large folios still map a folio
            # per fault: on an ext4 file cached that way a 128-token prompt maps most of a 130m
            # table; docs/targets.md.)
            for advice in ("MADV_RANDOM", "MADV_NOHUGEPAGE"):
                try:
                    mapped.madvise(getattr(mmap, advice))
                except (AttributeError, OSError, ValueError):
                    pass
            self.maps[location] = (mapped, np.frombuffer(mapped, dtype=np.uint8))
        return self.maps[location][1]

    def add(self, onnx_path: str | Path, options: ctypes.c_void_p) -> dict[str, list[RowTable]]:
        """Give ``options`` this graph's external initializers (the shared OrtValues); returns the
        row tables that each graph input indexes (their rows are read before a run gathers them)."""
        try:
            tensors = external_tensors(onnx_path)
            lookups = row_lookups(onnx_path)
        except (ValueError, IndexError, UnicodeDecodeError):
            return {}  # not a readable ONNX file: ONNX Runtime says why when it opens it
        indexed: dict[str, list[RowTable]] = {}
        with self._lock:
            for t in tensors:
                if t.length < self.MIN_BYTES or t.offset % 64 or t.data_type not in _NP_TYPES:
                    continue
                ids = lookups.get(t.name)
                if t.name not in self.values:
                    data = self._mapping(t.location)
                    if t.offset + t.length > data.size:
                        raise EdgeseqError(f"{t.location}: {t.name} lies past the end of the file")
                    if ids and t.length >= self.ROWS_MIN_BYTES and RowTable.fits(t):
                        self.tables[t.name] = RowTable((self.folder / t.location).resolve(), t)
                        address = self.tables[t.name].address
                    else:
                        address = data.ctypes.data + t.offset
                    self.values[t.name] = (t, self.api.tensor_at(address, t.dims, t.data_type))
                elif self.values[t.name][0] != t:
                    continue  # another graph's tensor of this name: leave it to the session
                table = self.tables.get(t.name)
                if table is not None:
                    if ids:
                        for name in ids:
                            indexed.setdefault(name, []).append(table)
                    else:  # this graph reads the table otherwise: all of it in memory
                        table.fill_all()
                self.api.AddInitializer(options, t.name.encode(), self.values[t.name][1])
        return indexed

    def drop_pages(self) -> None:
        """Drop the mapped pages from this process's resident set; they are read again from the
        file (the page cache) when touched — a shared read-only mapping is never written."""
        for mapped, _ in self.maps.values():
            try:
                mapped.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass

    def dropping_pages(self, interval: float = 0.001) -> "_PageDropper":
        """A context in which a thread keeps dropping the mapped pages (while sessions load and
        pre-pack: the raw weights are read once and then only through the packed copies)."""
        return _PageDropper(self, interval)

    def close(self) -> None:
        if self.api is None:
            return
        for _, value in self.values.values():
            self.api.ReleaseValue(value)
        self.values.clear()
        for table in self.tables.values():
            table.close()
        if self.container:
            self.api.ReleasePrepackedWeightsContainer(self.container)
            self.container = None
        for mapped, view in list(self.maps.values()):
            del view
        self.maps.clear()

    def __del__(self) -> None:  # sessions hold references to this object, so it outlives them
        try:
            self.close()
        except Exception:
            pass


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).
    A session's load frees what it no longer needs — packed copies of weights the container already
    held, graph-transformation scratch — in sizes glibc keeps in its heap (130m w8a8-block: 10–20 MiB
    that stayed resident after the second session opened)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


class _PageDropper:
    def __init__(self, weights: SharedWeights, interval: float):
        self.weights, self.interval = weights, interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edgeseq-drop-pages", daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self.weights.drop_pages()

    def __enter__(self) -> "_PageDropper":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join()
        self.weights.drop_pages()


@dataclass
class _Meta:
    name: str


class CapiBinding:
    """Inputs and outputs bound to caller-owned buffers (the ``IoBinding`` subset ``_BoundStep`` uses)."""

    def __init__(self, session: "CapiSession"):
        self.session = session
        n_in, n_out = len(session.input_names), len(session.output_names)
        self.inputs = (ctypes.c_void_p * n_in)()
        self.outputs = (ctypes.c_void_p * n_out)()
        self._in = {n: i for i, n in enumerate(session.input_names)}
        self._out = {n: i for i, n in enumerate(session.output_names)}
        self.indices: dict[str, np.ndarray] = {}  # bound inputs that index row tables, as arrays over their buffers

    def _bind(self, table: Any, index: int, dtype: Any, shape: Sequence[int], address: int) -> None:
        api = self.session.api
        if table[index]:
            api.ReleaseValue(table[index])
        value = api.tensor_at(address, shape, _ONNX_TYPES[np.dtype(dtype)])
        table[index] = value.value

    def bind_input(self, name: str, device: str, device_id: int, dtype: Any, shape: Sequence[int], address: int) -> None:
        self._bind(self.inputs, self._in[name], dtype, shape, address)
        if name in self.session.row_tables:
            dtype = np.dtype(dtype)
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = (ctypes.c_char * size).from_address(address)
            self.indices[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)

    def bind_output(self, name: str, device: str, device_id: int, dtype: Any, shape: Sequence[int], address: int) -> None:
        self._bind(self.outputs, self._out[name], dtype, shape, address)

    def __del__(self) -> None:
        try:
            for table in (self.inputs, self.outputs):
                for v in table:
                    if v:
                        self.session.api.ReleaseValue(v)
        except Exception:
            pass


class CapiSession:
    """One ONNX Runtime CPU session opened through the C API with :class:`SharedWeights`: the
    subset of ``onnxruntime.InferenceSession`` that ``targets.runtimes`` uses."""

    def __init__(self, path: str | Path, weights: SharedWeights, threads: int | None, config: dict[str, str],
                 mem_pattern: bool = True, disabled_optimizers: Sequence[str] = (), arena: bool = True):
        self.api = api_ = weights.api
        self.weights = weights  # kept alive: the session reads its buffers
        options = ctypes.c_void_p()
        api_.CreateSessionOptions(ctypes.byref(options))
        try:
            api_.SetSessionLogSeverityLevel(options, 3)
            if threads:
                api_.SetIntraOpNumThreads(options, int(threads))
                api_.SetInterOpNumThreads(options, 1)
            if not mem_pattern:
                api_.DisableMemPattern(options)
            if not arena:
                api_.DisableCpuMemArena(options)
            for key, value in {**config, **({"session.use_env_allocators": "1"} if api_.shared_arena and arena else {})}.items():
                api_.AddSessionConfigEntry(options, key.encode(), value.encode())
            if disabled_optimizers:  # ';'-separated (a ',' list reads as one unknown name)
                api_.AddSessionConfigEntry(options, b"optimization.disable_specified_optimizers",
                                           ";".join(disabled_optimizers).encode())
            custom_ops = custom_ops_library(path)  # the artifact's fused kernels, when the graph uses them
            if custom_ops is not None:
                api_.register_custom_ops(options, custom_ops)
            self.row_tables = weights.add(path, options)
            session = ctypes.c_void_p()
            try:
                with weights.dropping_pages():
                    api_.CreateSessionWithPrepackedWeightsContainer(api_.env, str(path).encode(), options,
                                                                    weights.container, ctypes.byref(session))
            except EdgeseqError as exc:
                raise EdgeseqError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from None
            self.session = session
            _trim_heap()
        finally:
            api_._ReleaseSessionOptions(options)
        self.input_names = self._names("Input")
        self.output_names = self._names("Output")
        self.overridable = self._names("OverridableInitializer")
        self._in_c = (ctypes.c_char_p * len(self.input_names))(*[n.encode() for n in self.input_names])
        self._out_c = (ctypes.c_char_p * len(self.output_names))(*[n.encode() for n in self.output_names])

    def _names(self, kind: str) -> list[str]:
        count = ctypes.c_size_t()
        getattr(self.api, f"SessionGet{kind}Count")(self.session, ctypes.byref(count))
        names = []
        for i in range(count.value):
            name = ctypes.c_char_p()
            getattr(self.api, f"SessionGet{kind}Name")(self.session, i, self.api.allocator, ctypes.byref(name))
            names.append(name.value.decode())
            self.api.AllocatorFree(self.api.allocator, ctypes.cast(name, ctypes.c_void_p))
        return names

    # the InferenceSession subset
    def get_inputs(self) -> list[_Meta]:
        return [_Meta(n) for n in self.input_names]

    def get_outputs(self) -> list[_Meta]:
        return [_Meta(n) for n in self.output_names]

    def get_overridable_initializers(self) -> list[_Meta]:
        return [_Meta(n) for n in self.overridable]

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any]) -> list[np.ndarray]:
        names = list(feeds)
        arrays = [np.require(feeds[n], requirements="C") for n in names]  # (ascontiguousarray makes 0-d 1-d)
        for name, array in zip(names, arrays):
            for table in self.row_tables.get(name, ()):
                table.ensure(array)
        values = [self.api.tensor(a) for a in arrays]
        outputs = list(output_names) if output_names else self.output_names
        # a state output (``new_<state>``, export.graphs) has its input's shape and type: ONNX Runtime
        # writes it straight into an array allocated here, not into its arena for a copy (a 130m
        # prefill: 2.8 MiB of arena per call and the fragments it leaves)
        fed = dict(zip(names, arrays))
        direct = {i: np.empty_like(fed[n[4:]]) for i, n in enumerate(outputs)
                  if n.startswith("new_") and n[4:] in fed and fed[n[4:]].dtype == np.float32 and fed[n[4:]].ndim > 1}
        out = (ctypes.c_void_p * len(outputs))()
        for i, array in direct.items():
            out[i] = self.api.tensor(array).value
        in_c = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
        out_c = (ctypes.c_char_p * len(outputs))(*[n.encode() for n in outputs])
        in_v = (ctypes.c_void_p * len(values))(*[v.value for v in values])
        try:
            self.api.Run(self.session, None, in_c, in_v, len(values), out_c, len(outputs), out)
            return [direct[i] if i in direct else self.api.to_numpy(ctypes.c_void_p(v)) for i, v in enumerate(out)]
        finally:
            for v in values:
                self.api.ReleaseValue(v)
            for v in out:
                if v:
                    self.api.ReleaseValue(ctypes.c_void_p(v))
            del arrays

    def io_binding(self) -> CapiBinding:
        return CapiBinding(self)

    def run_with_iobinding(self, binding: CapiBinding) -> None:
        for name, array in binding.indices.items():
            for table in self.row_tables[name]:
                table.ensure(array)
        self.api.Run(self.session, None, self._in_c, binding.inputs, len(self.input_names), self._out_c,
                     len(self.output_names), binding.outputs)

    def __del__(self) -> None:
        try:
            if getattr(self, "session", None):
                self.api.ReleaseSession(self.session)
                self.session = None
        except Exception:
            pass
