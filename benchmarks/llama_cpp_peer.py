"""llama.cpp, built from source, as the peer row of ``benchmarks/decode_cpu.py``.

    python benchmarks/llama_cpp_peer.py --cache /tmp/edgeseq-decode-cpu/llama.cpp    # build + convert only

What it does (each step cached in ``--cache``, skipped when its output exists):

1. **source** — llama.cpp as vendored in the ``llama-cpp-python`` source distribution on PyPI
   (``pip download --no-binary :all: --no-deps llama-cpp-python==VERSION``), unpacked;
2. **build** — ``cmake`` Release build of ``vendor/llama.cpp`` for this CPU (``GGML_NATIVE``),
   static, targets ``llama-bench`` and ``llama-quantize`` only (a few minutes on 2 cores);
3. **model** — a mamba-130m-shaped ``transformers`` ``MambaForCausalLM`` with random weights
   (seed 0) written with ``save_pretrained`` (the same folder edgeseq loads), converted to GGUF
   F32 by llama.cpp's own ``convert_hf_to_gguf.py`` (no tokenizer in the folder: the converter
   uses its built-in GPT-NeoX vocabulary, which has the same 50,280 ids), then ``llama-quantize``
   to Q8_0 and Q4_0;
4. **timing** (:func:`measure`) — ``llama-bench`` in its own process: decode one token per
   repetition (``-p 0 -n 1 -r N``; the per-repetition samples give p50/p90 ms/token; Mamba's
   decode cost does not depend on the position), prefill of 128 tokens (``-p 128 -n 0``), and the
   process's peak RSS (``/usr/bin/time``), and the CPU time per token (the ``wait4`` CPU seconds of
   the decode run minus those of a one-repetition run, over the extra tokens): with one thread
   that is what a quiet machine's wall time would be, whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp is built
CONFIG = dict(vocab_size=50280, d_model=768, n_layer=24, d_state=16, d_conv=4, expand=2)
QUANTS = ("F32", "Q8_0", "Q4_0")


def log(message: str) -> None:
    sys.stderr.write(f"[llama_cpp {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _run(cmd: list[str], **kwargs) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def source_dir(cache: Path) -> Path:
    """The unpacked llama.cpp tree (downloaded with pip the first time)."""
    root = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    tree = root / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", cache])
    with tarfile.open(sdist) as tar:
        tar.extractall(cache, filter="data")
    return tree


def build(cache: Path, jobs: int = 2) -> dict[str, Path]:
    """``llama-bench`` and ``llama-quantize`` built for this CPU."""
    tree = source_dir(cache)
    out = cache / "build"
    tools = {name: out / "bin" / name for name in ("llama-bench", "llama-quantize")}
    if all(p.is_file() for p in tools.values()):
        return tools
    _run(["cmake", "-S", tree, "-B", out, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
          "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
          "-DGGML_OPENMP=ON"], stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    _run(["cmake", "--build", out, "--config", "Release", "-j", str(jobs), "--target", *tools], stdout=subprocess.DEVNULL)
    log(f"built in {time.perf_counter() - start:.0f} s")
    return tools


def write_hf_folder(folder: Path, layers: int = CONFIG["n_layer"], seed: int = 0) -> Path:
    """A random-weight mamba-130m-shaped ``save_pretrained`` folder (what edgeseq loads too)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(vocab_size=CONFIG["vocab_size"], hidden_size=CONFIG["d_model"], num_hidden_layers=layers,
                         state_size=CONFIG["d_state"], conv_kernel=CONFIG["d_conv"], expand=CONFIG["expand"],
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    MambaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def convert(cache: Path, hf_folder: Path, tools: dict[str, Path]) -> dict[str, Path]:
    """GGUF files F32 (``convert_hf_to_gguf.py``), Q8_0 and Q4_0 (``llama-quantize``)."""
    tree = source_dir(cache)
    tag = hf_folder.name
    ggufs = {q: cache / f"{tag}-{q}.gguf" for q in QUANTS}
    if not ggufs["F32"].is_file():
        env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "NO_LOCAL_GGUF": ""}
        _run([sys.executable, tree / "convert_hf_to_gguf.py", hf_folder, "--outtype", "f32", "--outfile", ggufs["F32"]],
             env=env, stdout=subprocess.DEVNULL)
    for q in QUANTS[1:]:
        if not ggufs[q].is_file():
            _run([tools["llama-quantize"], ggufs["F32"], ggufs[q], q], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ggufs


def prepare(cache: Path, layers: int = CONFIG["n_layer"], jobs: int = 2) -> tuple[dict[str, Path], dict[str, Path]]:
    tools = build(cache, jobs)
    folder = write_hf_folder(cache / f"mamba-130m-shape-L{layers}", layers)
    return tools, convert(cache, folder, tools)


def run_measured(cmd: list[str]) -> tuple[str, int, float]:
    """Run ``cmd``; its stdout, its own peak RSS in bytes and its CPU seconds (``wait4``)."""
    # through /usr/bin/time: a child forked from a large Python process starts with that process's
    # ru_maxrss (Linux keeps the high-water mark across fork and exec); forked from `time` it is the
    # command's own
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as record:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", record.name, *[str(c) for c in cmd]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        rss_kib = int(record.read().strip().splitlines()[-1])
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return out, rss_kib * 1024, usage.ru_utime + usage.ru_stime


def measure(tools: dict[str, Path], gguf: Path, threads: int, tokens: int = 20, prefill: int = 128,
            prefill_reps: int = 2) -> dict:
    """One timing round of one GGUF file: per-token decode samples (ms), prefill tok/s, peak RSS."""
    bench = tools["llama-bench"]
    out, rss_decode, cpu_n = run_measured([bench, "-m", gguf, "-t", threads, "-p", 0, "-n", 1, "-r", tokens, "-o", "json"])
    decode = json.loads(out)[0]
    samples = [ns / 1e6 for ns in decode["samples_ns"]]
    # CPU time per token, robust to other processes' load: the same run with one repetition
    # (model load, warm-up) subtracted
    _, _, cpu_1 = run_measured([bench, "-m", gguf, "-t", threads, "-p", 0, "-n", 1, "-r", 1, "-o", "json"])
    out, rss_prefill, _ = run_measured([bench, "-m", gguf, "-t", threads, "-p", prefill, "-n", 0, "-r", prefill_reps,
                                        "-o", "json"])
    pre = json.loads(out)[0]
    return {"decode_ms": samples, "cpu_ms_per_token": max(cpu_n - cpu_1, 0.0) * 1e3 / (tokens - 1),
            "prefill_tok_s": float(pre["avg_ts"]), "peak_rss_bytes": max(rss_decode, rss_prefill),
            "build": decode.get("build_commit"), "cpu_info": decode.get("cpu_info")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="/tmp/edgeseq-decode-cpu/llama.cpp")
    p.add_argument("--layers", type=int, default=CONFIG["n_layer"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", action="store_true", help="also time each GGUF once")
    args = p.parse_args(argv)
    tools, ggufs = prepare(Path(args.cache), args.layers)
    for q, path in ggufs.items():
        line = f"{q}: {path} ({path.stat().st_size / 2**20:.1f} MiB)"
        if args.time:
            m = measure(tools, path, args.threads)
            line += (f"  decode p50 {statistics.median(m['decode_ms']):.2f} ms  prefill {m['prefill_tok_s']:.0f} tok/s  "
                     f"peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB  load {os.getloadavg()[0]:.2f}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
