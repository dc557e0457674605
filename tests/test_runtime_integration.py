"""End to end: a real PS and real agent processes on 127.0.0.1 train LeNet on the local MNIST data.

(1) a clean run of each scheme learns; (2) MOLS K=15 r=3 with q=3 under ALIE and coordinate median still learns;
(3) an agent killed mid-run becomes an erasure and the run finishes; (4) a PS killed with SIGKILL and restarted
with --resume ends with the same parameters as an uninterrupted run; (5) an agent with the wrong token is refused
and the run is unaffected.
"""
from __future__ import annotations

import http.server
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from shield_ps.events import effective_events
from shield_ps.phases.exclusion import FIRST_EXCLUSION_STEPS
from shield_ps.view import fold_all, iter_events
from tests.runtime_helpers import (
    MNIST_DIR,
    TOKEN,
    Process,
    events,
    final_params,
    run_serve,
    start_agent,
    start_serve,
    wait_for_step,
    wait_for_worker,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]

CHANCE = 0.1


def _final_eval(train_dir: Path) -> dict:
    evals = events(train_dir, "eval")
    assert evals, (train_dir / "serve.log").read_text()[-3000:]
    return evals[-1]


def _summary(train_dir: Path) -> dict:
    summaries = events(train_dir, "summary")
    assert summaries, (train_dir / "serve.log").read_text()[-3000:]
    return summaries[-1]


SCHEMES = [
    ("baseline", ["--workers", "3", "--replication", "1"]),
    ("detox", ["--workers", "3", "--replication", "3"]),
    ("maj_vote", ["--workers", "3", "--replication", "3"]),
    ("rama_two", ["--workers", "9", "--replication", "3", "--rama-m", "3"]),
    ("mols", ["--workers", "15", "--replication", "3"]),
    ("rama_one", ["--workers", "15", "--replication", "3"]),
]


@pytest.mark.parametrize("scheme,flags", SCHEMES, ids=[s for s, _ in SCHEMES])
def test_clean_run_of_each_scheme_learns(tmp_path: Path, scheme: str, flags: list[str]) -> None:
    workers = int(flags[1])
    result = run_serve(tmp_path, "--scheme", scheme, *flags, "--local-agents", str(workers), "--max-steps", "60",
                       "--eval-freq", "30", "--lr", "0.02")
    log = (tmp_path / "serve.log").read_text()
    assert result.returncode == 0, log[-3000:]
    summary = _summary(tmp_path)
    assert summary["reason"] == "completed" and summary["steps"] == 60
    assert summary["files_corrupted"] == 0 and summary["steps_skipped"] == 0 and summary["metrics_complete"]
    # nobody lies or loses a vote; "slow" is not asserted: on a loaded 2-core machine an honest worker may miss a
    # hedge delay now and then, which is a timing fact, not a fault of the run
    assert summary["lying_workers"] == summary["outvoted_workers"] == {}
    assert summary["checkpoint_errors"] == [] and summary["last_checkpoint"] == 60
    top1 = _final_eval(tmp_path)["top1"]
    assert top1 > 5 * CHANCE, f"{scheme}: held-out top-1 {top1:.3f} after 60 steps"
    steps = events(tmp_path, "step")
    assert [e["step"] for e in steps] == list(range(60))
    job = events(tmp_path, "job")[0]
    f = job["files"]
    assert all(e["files_won"] == f and e["files_dropped"] == 0 for e in steps)


def test_mols_under_alie_with_coordinate_median_still_learns(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--scheme", "mols", "--workers", "15", "--replication", "3", "--local-agents", "15",
                       "--byzantine", "3", "--attack", "alie", "--byzantine-gen", "worst",
                       "--aggregator", "coord-median", "--max-steps", "80", "--eval-freq", "40", "--lr", "0.02")
    assert result.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    steps = events(tmp_path, "step")
    # the worst-case set of 3 workers wins c_max(3) = 3 of the 25 files every step, and is outvoted elsewhere
    assert {e["files_corrupted"] for e in steps} == {3}
    # the simulated Byzantine workers' values lose votes (outvoted); nothing proves a lie, so nobody is lying
    assert all(e["outvoted"] for e in steps) and not any(e["lying"] for e in steps)
    assert _final_eval(tmp_path)["top1"] > 4 * CHANCE


def test_agent_killed_mid_run_becomes_an_erasure(tmp_path: Path) -> None:
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3",
                           "--max-steps", "300", "--eval-freq", "150", "--gather-timeout", "10")
    agents = [start_agent(port, tmp_path / f"agent{i}.log") for i in range(3)]
    try:
        wait_for_step(tmp_path, 5, timeout=240, watch=[ps])
        agents[0].kill()
        killed_at = max(e["step"] for e in events(tmp_path, "step"))
        assert ps.wait(timeout=400) == 0, ps.output()[-3000:]
    finally:
        for proc in agents + [ps]:
            proc.stop()
    summary = _summary(tmp_path)
    assert summary["reason"] == "completed" and summary["steps"] == 300
    assert killed_at < 290, "the run was meant to go on well after the kill"
    after = [e for e in events(tmp_path, "step") if e["step"] > killed_at + 2]
    assert after and all(e["erased"] and e["files_won"] == 1 for e in after)
    assert len({w for e in after for w in e["erased"]}) == 1
    assert _final_eval(tmp_path)["top1"] > 3 * CHANCE


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    flags = ["--scheme", "detox", "--workers", "3", "--replication", "3", "--local-agents", "3",
             "--max-steps", "30", "--eval-freq", "10", "--seed", "7"]
    reference = tmp_path / "reference"
    assert run_serve(reference, *flags).returncode == 0, (reference / "serve.log").read_text()[-3000:]

    interrupted = tmp_path / "interrupted"
    ps, _ = start_serve(interrupted, *flags)
    try:
        wait_for_step(interrupted, 14, timeout=240, watch=[ps])
        ps.kill()
        ps.wait(timeout=30)
    finally:
        ps.stop()
    assert not events(interrupted, "summary"), "the PS was meant to die before finishing"
    (interrupted / "serve.log").rename(interrupted / "serve-killed.log")
    result = run_serve(interrupted, *flags, "--resume")
    assert result.returncode == 0, (interrupted / "serve.log").read_text()[-3000:]
    jobs = events(interrupted, "job")
    assert jobs[-1]["resumed"] and jobs[-1]["start_step"] in (10, 20)

    standing = [e["step"] for e in effective_events(events(interrupted)) if e["kind"] == "step"]
    assert standing == list(range(30)), "a re-run step must count once"
    assert fold_all(iter_events(interrupted)).steps_seen == 30

    ref_step, ref_params = final_params(reference)
    step, params = final_params(interrupted)
    assert step == ref_step == 30
    np.testing.assert_array_equal(params, ref_params)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path) -> None:
    flags = ["--scheme", "detox", "--workers", "3", "--replication", "3", "--local-agents", "3",
             "--max-steps", "4", "--eval-freq", "2"]
    assert run_serve(tmp_path, *flags).returncode == 0
    result = run_serve(tmp_path, *flags, "--resume", "--lr", "0.5")
    assert result.returncode == 2
    assert "lr: 0.01 -> 0.5" in (tmp_path / "serve.log").read_text()


def test_agent_with_wrong_token_is_refused_and_run_unaffected(tmp_path: Path) -> None:
    # (a worker later than the digest grace's floor is erased for the step: on a loaded CI host honest agents may be,
    # so the floor is raised well above such lateness, and any erasure left is the intruder's doing)
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3",
                           "--max-steps", "20", "--eval-freq", "10", "--digest-grace-floor", "2")
    # started as a user would (it may reconnect): it must still give up, after a few refusals, in one line
    intruder = Process([sys.executable, "-m", "shield_agent.cli", "join", f"127.0.0.1:{port}", "--token",
                        "wrong-token-wrong-token-wrong", "--data-dir", str(MNIST_DIR)], tmp_path / "intruder.log")
    agents: list[Process] = []
    try:  # the PS waits for its agents meanwhile, so the intruder is refused by a live PS every time
        assert intruder.wait(timeout=240) == 2, intruder.output()[-2000:]
        agents = [start_agent(port, tmp_path / f"agent{i}.log") for i in range(3)]
        assert ps.wait(timeout=300) == 0, ps.output()[-3000:]
    finally:
        for proc in agents + [intruder, ps]:
            proc.stop()
    errors = [line for line in intruder.output().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "refused our authentication 3 times in a row" in errors[0], intruder.output()
    summary = _summary(tmp_path)
    assert summary["reason"] == "completed" and summary["lying_workers"] == summary["outvoted_workers"] == {}
    assert summary["refused"] >= 1  # the intruder, refused before authentication, is counted
    assert all(not e["erased"] for e in events(tmp_path, "step"))


def test_a_hand_started_agent_exits_non_zero_when_the_run_does_not_complete(tmp_path: Path) -> None:
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3",
                           "--max-steps", "1000", "--eval-freq", "500")
    agent = Process([sys.executable, "-m", "shield_agent.cli", "join", f"127.0.0.1:{port}", "--token", TOKEN,
                     "--data-dir", str(MNIST_DIR), "--workers", "3"], tmp_path / "agent.log")
    try:
        wait_for_step(tmp_path, 2, timeout=240, watch=[ps, agent])
        ps.kill(signal.SIGTERM)
        assert agent.wait(timeout=60) == 1, agent.output()[-2000:]
    finally:
        for proc in (agent, ps):
            proc.stop()
    output = agent.output()
    assert sorted(output.count(f"became worker {w} ") for w in range(3)) == [1, 1, 1], output
    assert output.count("the run ended: interrupted") == 3


def test_real_byzantine_agents_are_outvoted_and_caught(tmp_path: Path) -> None:
    """One agent computes -100 x its gradient (a consistent lie: outvoted), another sends honest digests but forged
    payloads (caught when its payload does not hash to the digest it voted; the next holder is asked)."""
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3",
                           "--max-steps", "24", "--eval-freq", "12")
    honest = start_agent(port, tmp_path / "honest.log", TOKEN, "--name", "honest")
    wait_for_worker(tmp_path, 0, watch=[ps])
    liar = start_agent(port, tmp_path / "liar.log", TOKEN, "--adversary", "scale:-100")
    wait_for_worker(tmp_path, 1, watch=[ps])
    forger = start_agent(port, tmp_path / "forger.log", TOKEN, "--adversary", "forger")
    try:
        assert ps.wait(timeout=300) == 0, ps.output()[-3000:]
    finally:
        for proc in (honest, liar, forger, ps):
            proc.stop()
    steps = events(tmp_path, "step")
    # the forger's digests win, its payloads do not hash to them: proven lying (never merely outvoted), and then it
    # sits out the next 8 steps: its files are erasures, so the file has no majority then (a 3-worker fleet has no
    # spare holder) and those updates are skipped, not taken from the liar
    convicted = [i for i, e in enumerate(steps) if 2 in e["lying"]]
    assert convicted, "the forger was never asked for a payload"
    excluded = {j for n, i in enumerate(convicted)  # the n-th conviction: 8 x 2**n steps
                for j in range(i + 1, min(i + 1 + (FIRST_EXCLUSION_STEPS << n), len(steps)))}
    for i, e in enumerate(steps):
        assert 2 not in e["outvoted"] and 0 not in e["lying"] and 0 not in e["outvoted"], e  # 0 is honest
        if i in excluded:
            assert e["excluded"] == [2] and e["files_won"] == 0 and e["aggregation"]["action"] == "skip", e
        else:
            # the consistent liar's digests lose every vote: outvoted, not proven lying (it never contradicts itself)
            assert e["excluded"] == [] and e["files_won"] == 1 and 1 in e["outvoted"] and 1 not in e["lying"], e
    summary = _summary(tmp_path)
    assert set(summary["lying_workers"]) == {"2"} and set(summary["outvoted_workers"]) == {"1"}
    assert summary["outvoted_workers"]["1"] == len(steps) - len(excluded)
    # every step the forger took part in was aggregated from the honest payload (learning is the clean tests' job:
    # here the exclusions leave only a few updates)
    assert summary["steps_skipped"] == len(excluded) and np.isfinite(final_params(tmp_path)[1]).all()


class _FakeIMDS(http.server.BaseHTTPRequestHandler):
    """IMDSv2 on 127.0.0.1: a token, then spot/instance-action (404 until the test raises ``notice``)."""

    notice = threading.Event()

    def do_PUT(self) -> None:  # noqa: N802
        self._answer(200, b"token-1")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            self._answer(401, b"")
        elif self.notice.is_set():
            self._answer(200, json.dumps({"action": "terminate", "time": "2026-11-26T20:00:00Z"}).encode())
        else:
            self._answer(404, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_spot_interruption_notice_makes_the_agent_leave_cleanly(tmp_path: Path) -> None:
    imds = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeIMDS)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    _FakeIMDS.notice.clear()
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3",
                           "--max-steps", "400", "--eval-freq", "200", "--gather-timeout", "30")
    agents = [start_agent(port, tmp_path / f"agent{i}.log") for i in range(2)]
    spot = start_agent(port, tmp_path / "spot.log", TOKEN, "--spot-watch", "--imds",
                       f"127.0.0.1:{imds.server_address[1]}")
    try:
        wait_for_step(tmp_path, 3, timeout=240, watch=[ps])
        _FakeIMDS.notice.set()
        assert spot.wait(timeout=60) == 0, spot.output()[-2000:]
        assert ps.wait(timeout=300) == 0, ps.output()[-3000:]
    finally:
        imds.shutdown()
        for proc in agents + [spot, ps]:
            proc.stop()
    assert "spot interruption notice" in spot.output()
    assert _summary(tmp_path)["reason"] == "completed"
    left = [e for e in events(tmp_path, "worker") if e["state"] == "left"]
    assert left and left[0]["step"] < 399, "the spot agent should leave mid-run (IMDS is polled every 5 s)"
    assert left[0]["reason"] == "spot interruption"  # the PS records why (docs/metrics.md)
    assert events(tmp_path, "step")[-1]["erased"], "its slot is an erasure after it left"
