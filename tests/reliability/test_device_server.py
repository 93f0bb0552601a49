"""Issue 17, the device server: plain words about what a client can do, no root without saying so,
and a real secret (a random token printed at start) instead of a board name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reliability_helpers import ROOT, assert_one_line_error, run_cli


def test_help_says_what_a_client_can_do(capsys):
    from edgeseq.cli import main

    with pytest.raises(SystemExit):
        main(["device-server", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("any shared library", "write files anywhere", "--allow-root", "random token"):
        assert phrase in text, phrase


@pytest.fixture
def as_root(monkeypatch):
    import edgeseq.cli.device_server as device_server

    monkeypatch.setattr(device_server, "_running_as_root", lambda: True)


@pytest.mark.parametrize("argv, needle", [
    ([], "refusing to run the RPC server as root"),
    (["--host", "0.0.0.0"], "--allow-remote"),  # the bind check comes first
    (["--allow-root", "--token", "s3cret", "--no-token"], "not both"),
    (["--allow-root", "--key", "orin-nano"], "secret is --token"),
    (["--allow-root", "--tracker", "127.0.0.1:1", "--token", "s3cret"], "--token protects direct connections only"),
])
def test_refusals(capsys, as_root, argv, needle):
    code, out, err = run_cli(capsys, "device-server", *argv, "--json")
    assert_one_line_error(code, out, err, 2, needle, json_mode=True)


def test_a_direct_server_requires_its_token():
    pytest.importorskip("tvm")
    from edgeseq.errors import EdgeseqError
    from targets import rpc

    port = rpc.free_port()
    argv = [sys.executable, "-m", "edgeseq", "device-server", "--port", str(port), "--duration", "60", "--json"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        token = info["token"]
        assert token and len(token) >= 24 and info["key"] is None
        for wrong in ("", "orin-nano", token[:-1]):
            with pytest.raises(EdgeseqError, match="refused the session"):
                rpc.connect(rpc=f"127.0.0.1:{info['port']}", key=wrong)
        session = rpc.connect(rpc=f"127.0.0.1:{info['port']}", key=token)
        assert session is not None
        del session
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert f"--key {token}" in err  # printed at start for the user to pass on
    assert "Traceback" not in err
