"""Remote profiling through a real TVM RPC server and tracker on 127.0.0.1 (random free ports).

The servers run in child processes that the fixtures stop (with every session they forked), so
nothing outlives the module. No timing assertions: only what the reports say.
"""

import json

import pytest

from edgeseq.errors import EdgeseqError, InputError

pytest.importorskip("tvm")
from targets import rpc  # noqa: E402  (after the skip: imports nothing of TVM itself)
from targets.profile import REPORT_KEYS, profile_runtime  # noqa: E402
from targets.registry import TargetSpec  # noqa: E402

TARGET = TargetSpec(name="test-cpu", kind="cpu", memory_bandwidth_gbs=10.0, sources={"memory_bandwidth_gbs": "test"})
FAST = dict(prompt_len=4, tokens=5, warmup=1)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def direct_server():
    server = rpc.start_server("127.0.0.1", rpc.free_port())
    yield f"127.0.0.1:{server.port}", server
    rpc.stop(server)


@pytest.fixture(scope="module")
def tracker():
    pytest.importorskip("tornado")
    tracker = rpc.start_tracker("127.0.0.1", rpc.free_port())
    address = f"127.0.0.1:{tracker.port}"
    server = rpc.start_server("127.0.0.1", rpc.free_port(), key="loopback-cpu", tracker=address)
    yield address
    rpc.stop(server)
    rpc.stop(tracker)


def test_addresses_and_bind_policy():
    assert rpc.parse_address("127.0.0.1:9091") == ("127.0.0.1", 9091)
    assert rpc.parse_address("localhost", default_port=9190) == ("localhost", 9190)
    for bad in ("127.0.0.1:x", ":9090", "127.0.0.1:70000"):
        with pytest.raises(InputError, match="--rpc"):
            rpc.parse_address(bad)
    assert rpc.is_loopback("127.0.0.1") and rpc.is_loopback("::1") and not rpc.is_loopback("0.0.0.0")
    with pytest.raises(InputError, match="--allow-remote"):
        rpc.check_bind("0.0.0.0", allow_remote=False)
    rpc.check_bind("127.0.0.1", allow_remote=False)


def test_server_down_is_a_clear_error(tvm_artifact):
    port = rpc.free_port()
    with pytest.raises(EdgeseqError, match=f"no RPC server answers at 127.0.0.1:{port}"):
        rpc.profile_remote(tvm_artifact, rpc=f"127.0.0.1:{port}", **FAST)
    with pytest.raises(EdgeseqError, match="no tracker answers"):
        rpc.connect(tracker=f"127.0.0.1:{port}", key="x")
    with pytest.raises(InputError, match="exactly one of"):
        rpc.connect()


def test_cli_refuses_public_bind_and_down_server(capsys, tvm_artifact):
    from edgeseq.cli import main

    assert main(["device-server", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["profile", str(tvm_artifact), "--rpc", f"127.0.0.1:{rpc.free_port()}", "--json"]) == 1
    assert "no RPC server answers" in capsys.readouterr().err


def test_profile_through_direct_server(tvm_artifact, direct_server, small_bandwidth, capsys):
    from edgeseq.cli import main

    address, _ = direct_server
    code = main(["profile", str(tvm_artifact), "--rpc", address, "--json", "--tokens", "5", "--warmup", "1", "--prompt-len", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert set(REPORT_KEYS) <= set(report)
    assert report["runtime"] == "tvm-rpc" and report["timing"].startswith("device")
    assert report["partial"] is False and report["tokens"] == 5 and report["p50_ms"] > 0 and report["ttft_ms"] > 0
    assert report["rpc"] == address and report["peak_mem_bytes"] is None


def test_tracker_profiles_several_artifacts(tvm_artifact, tracker, small_bandwidth):
    # two artifacts, one registered device: the tracker queues the second until the first is done
    reports = rpc.profile_many([tvm_artifact, tvm_artifact], tracker=tracker, key="loopback-cpu", **FAST)
    assert len(reports) == 2
    for report in reports:
        assert report["partial"] is False, report.get("error")
        assert report["runtime"] == "tvm-rpc" and report["tokens"] == 5
    with pytest.raises(InputError, match="needs --key"):
        rpc.connect(tracker=tracker)


def test_server_going_away_gives_a_partial_report(tvm_artifact, direct_server):
    address, server = direct_server  # the last test to use it: it stops the server
    runtime = rpc.open_remote(tvm_artifact, rpc=address)
    timed = runtime.time_steps

    def time_then_vanish(*args):
        samples = timed(*args)
        rpc.stop(server)
        return samples

    runtime.time_steps = time_then_vanish
    report = profile_runtime(runtime, TARGET, prompt_len=4, tokens=12, warmup=1, chunk=4)
    assert report["partial"] is True and report["error"]
    assert report["tokens"] == 4 and report["p50_ms"] > 0
    assert report["measured"] == ["warmup"]
    runtime.close()
