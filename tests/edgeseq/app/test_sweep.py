"""Resumable sweeps: an interrupted sweep keeps what finished and a re-run does only the rest."""

import json

import pytest

from edgeseq.app.sweep import config_key, load_results, run_sweep

FN = "edgeseq.app.sweep:demo_unit"


def _calls(log):
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_interrupted_sweep_resumes_without_redoing_work(tmp_path):
    log = tmp_path / "calls.log"
    configs = [{"x": x} for x in range(5)]
    with pytest.raises(KeyboardInterrupt):
        run_sweep(FN, configs, tmp_path, {"log": str(log), "interrupt_at": 3}, progress=False)
    assert _calls(log) == [0, 1, 2, 3]
    assert sorted(r["config"]["x"] for r in load_results(tmp_path)) == [0, 1, 2]  # 3 never finished

    results = run_sweep(FN, configs, tmp_path, {"log": str(log)}, progress=False)
    assert _calls(log) == [0, 1, 2, 3, 3, 4]  # only the unfinished ones ran again
    assert [r["y"] for r in results] == [0, 1, 4, 9, 16]
    assert not list((tmp_path / "results").glob(".*"))  # no half-written result files


def test_failures_are_recorded_and_retried(tmp_path):
    log = tmp_path / "calls.log"
    configs = [{"x": x} for x in range(3)]
    results = run_sweep(FN, configs, tmp_path, {"log": str(log), "fail_at": 1}, progress=False)
    assert [r["status"] for r in results] == ["ok", "error", "ok"]
    assert "simulated failure" in results[1]["error"]
    results = run_sweep(FN, configs, tmp_path, {"log": str(log)}, progress=False)
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    assert _calls(log) == [0, 1, 2, 1]


def test_process_pool_gives_the_same_results(tmp_path):
    configs = [{"x": x} for x in range(4)]
    results = run_sweep(FN, configs, tmp_path, jobs=2, progress=False)
    assert [r["y"] for r in results] == [0, 1, 4, 9]


def test_duplicate_configs_are_refused(tmp_path):
    from edgeseq.errors import InputError

    with pytest.raises(InputError):
        run_sweep(FN, [{"x": 1}, {"x": 1}], tmp_path, progress=False)


def test_config_key_is_file_safe():
    assert config_key({"model": "zoo/mamba x", "recipe": "w8a8"}) == "zoo-mamba-x__w8a8"


@pytest.mark.slow
def test_sweep_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    log = tmp_path / "calls.log"
    configs = [{"x": x} for x in range(3)]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f"{config_key({'x': 0})}.json").write_text(
        json.dumps({"config": {"x": 0}, "status": "ok", "y": 0})
    )
    results = run_sweep(FN, configs, tmp_path, {"log": str(log)}, ray_address="local", progress=False)
    assert [r["y"] for r in results] == [0, 1, 4]
    assert sorted(_calls(log)) == [1, 2]  # the finished one was skipped on the cluster too


def test_units_with_failed_stages_are_kept_and_retried(tmp_path, monkeypatch):
    import edgeseq.app.sweep as sweep

    calls = []

    def unit(config, broken=True, **_):
        calls.append(config["x"])
        return {"stage_errors": {"export": "boom"}} if broken else {"y": 1}

    monkeypatch.setattr(sweep, "_resolve", lambda ref: unit)
    results = run_sweep("x:y", [{"x": 1}], tmp_path, {"broken": True}, progress=False)
    assert results[0]["status"] == "partial"
    results = run_sweep("x:y", [{"x": 1}], tmp_path, {"broken": False}, progress=False)
    assert results[0]["status"] == "ok" and calls == [1, 1]


def test_result_files_get_the_users_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run_sweep(FN, [{"x": 2}], tmp_path, progress=False)
    finally:
        os.umask(old)
    (path,) = (tmp_path / "results").glob("*.json")
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a team, not mkstemp's 0600


def test_a_stored_result_made_with_other_options_is_redone(tmp_path):
    log = tmp_path / "calls.log"
    run_sweep(FN, [{"x": 2}], tmp_path, {"log": str(log)}, progress=False, result_options={"size": 1})
    run_sweep(FN, [{"x": 2}], tmp_path, {"log": str(log)}, progress=False, result_options={"size": 1})
    assert _calls(log) == [2]
    (result,) = run_sweep(FN, [{"x": 2}], tmp_path, {"log": str(log)}, progress=False, result_options={"size": 2})
    assert _calls(log) == [2, 2] and result["options"] == {"size": 2}
