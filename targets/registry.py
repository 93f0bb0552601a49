"""The target registry: device specs as data, with the source of every figure.

Built-in targets live in ``targets/specs/*.json`` (one file per group: Jetson modules, NVIDIA
GPUs, neuromorphic chips). The host CPU is detected at run time (model, cores, ISA features from
``/proc/cpuinfo``) and its memory bandwidth is *measured* (``targets.bandwidth``, cached).

Users add or override targets with a JSON or TOML file of the same shape (``{"targets": [...]}``,
or TOML ``[[targets]]`` tables), passed as ``--targets-file`` or named by the environment variable
``EDGESEQ_TARGETS_FILE`` (several files separated by ``:``). Every entry is validated: a wrong
field is one ``InputError`` naming the file, the entry and the fix.

``targets()`` returns the registry, a plain dict ``name -> TargetSpec``.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError

SPECS_DIR = Path(__file__).parent / "specs"
ENV_TARGETS_FILE = "EDGESEQ_TARGETS_FILE"
HOST = "host"

KINDS = ("cpu", "gpu", "soc", "neuromorphic")
DEVICES = ("cpu", "cuda", None)
RUNTIMES = ("torch", "torch-cudagraph", "onnxruntime", "tvm", "tvm-rpc", "spiking-sim")
# figures that must carry a source when they are given
CITED_FIGURES = ("memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops", "typical_power_w", "memory_gb")


@dataclass
class TargetSpec:
    """One device: what it is, how fast its memory and arithmetic are, what runs on it.

    Units: GB = 1e9 bytes, GB/s, TOPS/TFLOPS = 1e12 ops/s (dense, no sparsity), watts.
    ``sources`` maps each given figure to the document it comes from.
    """

    name: str
    kind: str  # cpu | gpu | soc | neuromorphic
    description: str = ""
    device: str | None = "cpu"  # where the runtimes place tensors: cpu | cuda | None (simulated)
    memory_gb: float | None = None
    memory_bandwidth_gbs: float | None = None
    peak_int8_tops: float | None = None
    peak_fp16_tflops: float | None = None
    typical_power_w: float | None = None
    runtimes: list[str] = field(default_factory=list)
    tvm_target: str | dict | None = None  # a TVM tag name or a JSON-style target dict
    sources: dict[str, str] = field(default_factory=dict)
    energy_table: str | None = None  # device table of the spiking simulator (neuromorphic targets)
    energy_pj: dict[str, float] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # ISA features (CPUs)
    cores: int | None = None
    origin: str = "builtin"  # builtin | detected | the user file it came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        return None if self.memory_bandwidth_gbs is None else self.memory_bandwidth_gbs * 1e9


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_FIELD_NAMES = {f.name for f in fields(TargetSpec)}
_NUMBER_FIELDS = ("memory_gb", "memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops", "typical_power_w")


def spec_from_dict(data: Any, origin: str = "builtin", where: str = "") -> TargetSpec:
    """Validate one target entry and build its spec; errors name ``where`` and the field."""
    where = where or origin
    if not isinstance(data, dict):
        raise InputError(f"{where}: each target must be an object/table, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: a target needs a non-empty string 'name'")
    at = f"{where}: target {name!r}"
    unknown = sorted(set(data) - _FIELD_NAMES - {"origin"})
    if unknown:
        raise InputError(f"{at}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELD_NAMES - {'origin'}))}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InputError(f"{at}: 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    values = dict(data)
    for key in _NUMBER_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{at}: {key!r} must be a positive number (got {value!r})")
        values[key] = float(value)
    device = values.get("device", "cpu" if kind == "cpu" else "cuda" if kind in ("gpu", "soc") else None)
    if device not in DEVICES:
        raise InputError(f"{at}: 'device' must be 'cpu', 'cuda' or null (got {device!r})")
    values["device"] = device
    runtimes = values.get("runtimes", [])
    if not isinstance(runtimes, list) or any(r not in RUNTIMES for r in runtimes):
        raise InputError(f"{at}: 'runtimes' must be a list drawn from {', '.join(RUNTIMES)} (got {runtimes!r})")
    tvm_target = values.get("tvm_target")
    if tvm_target is not None and not (isinstance(tvm_target, str) or (isinstance(tvm_target, dict) and "kind" in tvm_target)):
        raise InputError(f"{at}: 'tvm_target' must be a TVM tag name or a dict with a 'kind' (got {tvm_target!r})")
    sources = values.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise InputError(f"{at}: 'sources' must map figure names to citation strings")
    uncited = [k for k in CITED_FIGURES if values.get(k) is not None and k not in sources]
    if uncited and origin == "builtin":
        raise InputError(f"{at}: figure(s) {', '.join(uncited)} have no entry in 'sources'")
    for key in ("energy_pj",):
        table = values.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in table.values()):
            raise InputError(f"{at}: {key!r} must map operation names to non-negative numbers")
    values["origin"] = origin
    return TargetSpec(**values)


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path}: targets file not found (set --targets-file or {ENV_TARGETS_FILE} to an existing .json/.toml file)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"{path}: not valid {kind} ({str(exc).splitlines()[0][:160]})") from None
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict) and isinstance(data.get("targets"), list):
        entries = data["targets"]
    else:
        raise InputError(f"{path}: expected {{\"targets\": [...]}} (JSON) or [[targets]] tables (TOML)")
    return entries


def load_file(path: str | Path, origin: str | None = None) -> dict[str, TargetSpec]:
    """Targets of one JSON/TOML file, validated."""
    path = Path(path).expanduser()
    origin = origin or str(path)
    specs: dict[str, TargetSpec] = {}
    for index, entry in enumerate(_read_file(path)):
        spec = spec_from_dict(entry, origin=origin, where=f"{path} (entry {index})")
        if spec.name in specs:
            raise InputError(f"{path}: target {spec.name!r} is defined twice")
        specs[spec.name] = spec
    return specs


def builtin_targets() -> dict[str, TargetSpec]:
    specs: dict[str, TargetSpec] = {}
    for path in sorted(SPECS_DIR.glob("*.json")):
        specs.update(load_file(path, origin="builtin"))
    return specs


# --------------------------------------------------------------------------------------------
# the host CPU
# --------------------------------------------------------------------------------------------

# ISA features worth reporting for int8/fp32 inference
_INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "sve", "i8mm",
)


def read_cpuinfo(text: str | None = None) -> dict[str, Any]:
    """Model name, logical cores, clock (MHz) and ISA flags of this machine's CPU."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    model, mhz, flags = "", None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key == "cpu mhz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        "mhz": mhz,
        "features": [f for f in _INTERESTING_FLAGS if f in flags],
        "machine": platform.machine(),
    }


def estimate_cpu_peaks(cores: int, mhz: float | None, features: list[str]) -> tuple[float | None, float | None]:
    """(int8 TOPS, fp32 TFLOPS) upper bounds from the ISA and clock (an estimate, cited as such).

    Per core per cycle: two FMA ports × lanes × 2 flops (AVX2: 8 fp32 lanes, AVX-512: 16); int8
    through ``vpmaddubsw`` chains doubles that, VNNI (``vpdpbusd``) quadruples it.
    """
    if not mhz:
        return None, None
    lanes = 16 if "avx512f" in features else 8 if "avx2" in features else 4
    fp32_per_cycle = 2 * lanes * 2 if "fma" in features or "avx512f" in features or "asimd" in features else lanes * 2
    int8_factor = 4 if {"avx512_vnni", "avx_vnni", "asimddp"} & set(features) else 2
    fp32 = cores * mhz * 1e6 * fp32_per_cycle / 1e12
    return round(fp32 * int8_factor, 3), round(fp32, 3)


def host_target(measure: bool = True, threads: int | None = None) -> TargetSpec:
    """The machine edgeseq runs on: detected CPU, measured (cached) memory bandwidth."""
    info = read_cpuinfo()
    int8_tops, fp32_tflops = estimate_cpu_peaks(info["cores"], info["mhz"], info["features"])
    bandwidth = None
    sources = {
        "cores": "detected: os.sched_getaffinity",
        "features": "detected: /proc/cpuinfo flags",
    }
    if measure:
        from targets.bandwidth import host_bandwidth

        measured = host_bandwidth(threads=threads)
        bandwidth = measured["read_gbs"]
        sources["memory_bandwidth_gbs"] = (
            f"measured: read bandwidth of a {measured['bytes'] // 2**20} MiB reduction, best of "
            f"{measured['repeats']}, {measured['threads']} thread(s) (targets.bandwidth; cached {measured['cached']})"
        )
    if int8_tops is not None:
        sources["peak_int8_tops"] = "estimate: cores x clock x int8 ops/cycle of the ISA (targets.registry.estimate_cpu_peaks)"
        sources["peak_fp16_tflops"] = "estimate: fp32 FMA throughput (no native fp16 arithmetic assumed)"
    return TargetSpec(
        name=HOST,
        kind="cpu",
        device="cpu",
        description=f"this machine: {info['model']} ({info['cores']} cores, {info['machine']})",
        memory_bandwidth_gbs=None if bandwidth is None else round(bandwidth, 2),
        peak_int8_tops=int8_tops,
        peak_fp16_tflops=fp32_tflops,
        runtimes=["torch", "onnxruntime", "tvm", "tvm-rpc"],
        tvm_target="llvm",
        sources=sources,
        features=info["features"],
        cores=info["cores"],
        origin="detected",
    )


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def user_files(targets_file: str | Path | None = None) -> list[Path]:
    files = [Path(p) for p in os.environ.get(ENV_TARGETS_FILE, "").split(os.pathsep) if p]
    if targets_file:
        files.append(Path(targets_file))
    return files


def targets(targets_file: str | Path | None = None, measure_host: bool = True) -> dict[str, TargetSpec]:
    """The registry ``name -> TargetSpec``: host, built-ins, then user files (which may override)."""
    registry = {HOST: host_target(measure=measure_host)}
    registry.update(builtin_targets())
    for path in user_files(targets_file):
        registry.update(load_file(path))
    return registry


def get_target(name: str, targets_file: str | Path | None = None, measure_host: bool = True) -> TargetSpec:
    """One target by name (``host`` = this machine); unknown names list the known ones."""
    if name in (HOST, "cpu", "local") and not user_files(targets_file):
        return host_target(measure=measure_host)
    registry = targets(targets_file, measure_host=measure_host and name in (HOST, "cpu", "local"))
    if name in ("cpu", "local"):
        name = HOST
    if name not in registry:
        raise InputError(f"unknown target {name!r}; known: {', '.join(registry)} (add your own with --targets-file)")
    return registry[name]


__all__ = [
    "ENV_TARGETS_FILE",
    "HOST",
    "TargetSpec",
    "builtin_targets",
    "estimate_cpu_peaks",
    "get_target",
    "host_target",
    "load_file",
    "read_cpuinfo",
    "spec_from_dict",
    "targets",
]
