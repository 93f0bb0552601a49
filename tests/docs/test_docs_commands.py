"""Every `edgeseq` command in the README and docs/*.md parses, names only things that exist (zoo
models, families, recipes, targets, energy tables), and — with small sizes — runs against the zoo.

A command is *run* when all it needs exists here: zoo models or the output of an earlier command
of the same page. Placeholders (``MODEL``, ``path/or/name``, ``./my-mamba``, ``runs/q-w8a8``) are
checked for parsing only. Long commands (training, the pipeline and report sweeps, TVM builds, the
device server) are parsed and name-checked but not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.S | re.M)
LONG = {"train", "pipeline", "report", "device-server"}
# small sizes appended to commands that are run (argparse keeps the last value)
SMALL = {
    "eval": ["--max-bytes", "2000", "--max-samples", "40"],
    "generate": ["--max-new-tokens", "8"],
    "quantize": ["--calib-samples", "4"],
    "export": ["--steps", "4"],
    "run": ["--max-new-tokens", "4"],
    "profile": ["--tokens", "4", "--warmup", "1", "--prompt-len", "4"],
    "simulate": ["--samples", "1"],
}
FILE_SUFFIXES = (".toml", ".json", ".txt", ".pth", ".pt", ".bin", ".safetensors", ".nir", ".npz")


def doc_commands(page: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` for every ``edgeseq`` command (also ``.venv/bin/edgeseq``) in shell blocks."""
    text = page.read_text()
    found = []
    for block in BLOCK.finditer(text):
        first_line = text[: block.start()].count("\n") + 2
        joined = block.group(1).replace("\\\n", " ")
        for offset, line in enumerate(joined.splitlines()):
            for part in re.split(r"&&|;|\|\|?", line):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                if ">" in words:  # a redirection: drop it and what follows
                    words = words[: words.index(">")]
                if words and Path(words[0]).name == "edgeseq":
                    found.append((first_line + offset, words[1:]))
    return found


def _known():
    from edgeseq.checkpoints import family_entries, zoo_names
    from edgeseq.spiking.energy import table_names

    return {"zoo": set(zoo_names()), "families": {r["name"] for r in family_entries()}, "tables": set(table_names())}


def _is_placeholder(value: str) -> bool:
    """A path or a stand-in the reader replaces (not a name edgeseq should know)."""
    return ("/" in value or value.startswith(".") or value.endswith(FILE_SUFFIXES)
            or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None)


def _subparser(parser, command):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def check_command(argv: list[str], produced: set[str], known: dict) -> tuple[list[str], bool]:
    """Problems with one command, and whether it can run here."""
    from edgeseq.cli import build_parser
    from edgeseq.errors import EdgeseqError
    from quantize.recipes import get_recipe
    from export.tvm_build import get_target as get_export_target
    from targets.registry import get_target

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return [f"`edgeseq {' '.join(argv)}` does not parse"], False
    command = argv[0]
    problems, runnable = [], command not in LONG
    sub = _subparser(parser, command)
    for action in sub._actions if sub else []:
        if action.option_strings or action.dest in ("help",):
            continue
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str):
                continue
            if action.dest == "family":
                if value not in known["families"]:
                    problems.append(f"unknown model family {value!r}")
            elif value in known["zoo"] or value in produced:
                continue
            elif value.startswith("random:"):
                if value.split(":", 1)[1] not in known["families"]:
                    problems.append(f"unknown model family in {value!r}")
            elif _is_placeholder(value):
                runnable = False
            else:
                problems.append(f"{value!r} is neither a zoo model ({', '.join(sorted(known['zoo']))}) nor a path")
    for option in ("recipe", "recipes"):
        for name in (getattr(args, option, None) or "").split(","):
            if name and not _is_placeholder(name):
                try:
                    get_recipe(name)
                except EdgeseqError:
                    problems.append(f"unknown recipe {name!r}")
            elif name:
                runnable = False
    for option in ("target", "targets"):
        for name in (getattr(args, option, None) or "").split(","):
            if name == "auto" and command == "pipeline":
                continue  # the pipeline's default: this CPU plus the visible GPU (edgeseq.cli.pipeline.pipeline_targets)
            if name and not _is_placeholder(name):
                try:
                    # export compiles for its own targets (cpu, aarch64, jetson-*, cuda); the others profile on the registry's
                    get_export_target(name) if command == "export" else get_target(name, measure_host=False)
                except EdgeseqError:
                    problems.append(f"unknown target {name!r}")
    table = getattr(args, "device_table", None)
    if isinstance(table, str):
        if _is_placeholder(table):
            runnable = False
        elif table not in known["tables"]:
            problems.append(f"unknown energy table {table!r}")
    data = getattr(args, "data", None)
    if isinstance(data, str) and _is_placeholder(data):
        runnable = False
    if command == "export" and getattr(args, "format", None) == "tvm":
        runnable = False  # a TVM build takes minutes
    if getattr(args, "nir", None):
        runnable = False  # needs the optional nir package
    return problems, runnable


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_doc_commands_parse_and_name_things_that_exist(page):
    known = _known()
    produced: set[str] = set()
    problems = []
    for line, argv in doc_commands(page):
        found, _ = check_command(argv, produced, known)
        problems += [f"{page.name}:{line}: {p}" for p in found]
        if "-o" in argv[:-1]:
            produced.add(argv[argv.index("-o") + 1])
    assert not problems, "\n".join(problems)


def test_the_checker_catches_unknown_names():
    known = _known()
    assert check_command(["export", "mamba-tiny", "--format", "onnx", "-o", "x"], set(), known)[0]
    assert check_command(["quantize", "mamba-shakespeare", "--recipe", "w3a3", "-o", "q"], set(), known)[0]
    assert check_command(["profile", "x/y", "--target", "nowhere-board"], set(), known)[0]
    assert check_command(["simulate", "random:mamba9"], set(), known)[0]
    assert check_command(["frobnicate"], set(), known)[0]
    assert check_command(["eval", "mamba-shakespeare"], set(), known) == ([], True)
    assert check_command(["eval", "QUANTIZED_DIR"], set(), known) == ([], False)


def test_readme_tells_to_activate_the_venv_before_single_steps():
    text = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in text


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_doc_commands_run_against_the_zoo(page, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from edgeseq.cli import main

    monkeypatch.chdir(tmp_path)
    known = _known()
    produced: set[str] = set()
    failures, ran = [], 0
    for line, argv in doc_commands(page):
        problems, runnable = check_command(argv, produced, known)
        if problems or not runnable:
            continue  # name problems fail the test above; placeholders and long commands are not run
        command = argv[0]
        try:
            code = main([*argv, *SMALL.get(command, [])])
        except SystemExit as exc:
            code = exc.code
        ran += 1
        out = capsys.readouterr()
        if code != 0:
            failures.append(f"{page.name}:{line}: `edgeseq {' '.join(argv)}` exited {code}: {out.err.strip()[-300:]}")
        elif "-o" in argv[:-1]:
            produced.add(argv[argv.index("-o") + 1])
    assert not failures, "\n".join(failures)
    if page.name == "README.md":
        assert ran >= 7  # every single step of the quick start ran
