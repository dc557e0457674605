"""Your own model (issue 23), end to end with real processes on 127.0.0.1: a plug-in with BatchNorm, dropout and a
random augmentation trains with local agents, every replica bit-equal; evaluate and resume work on its run, and a
resume with changed plug-in code is refused naming it; an agent whose copy differs, or that does not allow the module,
is refused and stops; the PS refuses an agent that reports another copy; a plug-in that is not repeatable on its
device lands in determinism classes and the sketch vote, with no file dropped; a bad plug-in is one line, exit 2,
before any agent starts."""
from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wire
from shield_model.zoo.plugins import PluginSpec, identify
from shield_ps.config import ServeConfig
from shield_ps.daemon import PSDaemon
from shield_ps.events import EventSink
from shield_ps.plugins import resolve_plugins
from tests.runtime_helpers import REPO, TOKEN, Process, events, final_params
from wire import ConnectionClosed, Kind

MODELS = REPO / "tests" / "plugin_models.py"
PLUG = ["--network", "blobplug:Mlp", "--dataset", "blobplug:blobs"]
DETOX6 = ["--scheme", "detox", "--workers", "6", "--replication", "3"]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def _plugin_dir(root: Path, extra: str = "") -> Path:
    """A folder holding ``blobplug.py`` (the test plug-ins; ``extra`` appended): found as the current directory."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "blobplug.py").write_text(MODELS.read_text() + extra)
    return root


def _in(cwd: Path, cmd: list[str]) -> list[str]:
    """``cmd`` run from ``cwd`` (a background :class:`Process` has no working directory of its own)."""
    return ["/bin/sh", "-c", 'cd "$0" && shift && exec "$@"', str(cwd), "-", *cmd]


def _serve(cwd: Path, train_dir: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--train-dir", str(train_dir),
           "--token", TOKEN, "--join-timeout", "180", "--gather-timeout", "120", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_plugin_trains_evaluates_and_resumes_and_changed_code_is_refused(tmp_path: Path) -> None:
    """Trains with local agents from the folder that holds the plug-in (no PYTHONPATH for it): every file of every
    step won by exact digests (dropout and the dataset's random jitter are seeded per file), learns, evaluates
    offline to the same numbers, resumes, and refuses to resume once the plug-in's code changed."""
    here = _plugin_dir(tmp_path / "work")
    run = tmp_path / "run"
    result = _serve(here, run, *PLUG, *DETOX6, "--local-agents", "6", "--max-steps", "30", "--eval-freq", "15")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    steps = events(run, "step")
    assert [e["step"] for e in steps] == list(range(30))
    assert all(e["files_won"] == 2 and e["files_dropped"] == 0 and e.get("sketch", {}).get("disputed", 0) == 0
               for e in steps), [e.get("sketch") for e in steps]
    job = events(run, "job")[-1]
    assert (job["network"], job["dataset"]) == ("blobplug:Mlp", "blobplug:blobs")
    evals = events(run, "eval")
    assert evals[-1]["step"] == 30 and evals[-1]["top1"] > 0.6  # four blobs: chance is 0.25
    offline = subprocess.run([sys.executable, "-m", "shield_ps.cli", "evaluate", "--train-dir", str(run), "--latest",
                              "--format", "json"], cwd=here, env=_env(), capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert json.loads(offline.stdout)[0]["top1"] == evals[-1]["top1"]

    _plugin_dir(here, "\n# a changed line\n")
    refused = _serve(here, run, *PLUG, *DETOX6, "--local-agents", "6", "--max-steps", "40", "--resume")
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    assert "the code of dataset blobplug:blobs changed" in refused.stderr
    assert "the code of network blobplug:Mlp changed" in refused.stderr
    stale = subprocess.run([sys.executable, "-m", "shield_ps.cli", "evaluate", "--train-dir", str(run), "--latest"],
                           cwd=here, env=_env(), capture_output=True, text=True, timeout=300)
    assert stale.returncode == 2 and "the code of network blobplug:Mlp changed since the run" in stale.stderr

    _plugin_dir(here)
    resumed = _serve(here, run, *PLUG, *DETOX6, "--local-agents", "6", "--max-steps", "36", "--eval-freq", "15",
                     "--resume")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert [e["step"] for e in events(run, "step")][30:] == list(range(30, 36))
    assert final_params(run)[0] == 36


@pytest.mark.slow
def test_an_agent_with_other_code_or_without_plugin_is_refused_and_stops(tmp_path: Path) -> None:
    """The PS runs one copy; an agent with another copy (a changed line) stops with exit 2, naming the module and
    both digests, rather than reconnecting; so does an agent whose --plugin does not allow the module."""
    ours = _plugin_dir(tmp_path / "ps")
    theirs = _plugin_dir(tmp_path / "agent", "\n# the agent's copy differs\n")
    digests = _plugin_dir(tmp_path / "digests")
    shutil.copy(theirs / "blobplug.py", digests / "blobplug_theirs.py")
    sys.path.insert(0, str(digests))
    try:
        ps_digest = identify(PluginSpec("blobplug", "Mlp")).digest[:16]
        agent_digest = identify(PluginSpec("blobplug_theirs", "Mlp")).digest[:16]
    finally:
        sys.path.remove(str(digests))
    assert ps_digest != agent_digest
    ps = Process(_in(ours, [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--train-dir",
                            str(tmp_path / "run"), "--token", TOKEN, "--join-timeout", "300", *PLUG, *DETOX6[:2],
                            "--workers", "3", "--replication", "3", "--max-steps", "5"]),
                 tmp_path / "serve.log", env={"PYTHONPATH": str(REPO)})
    agents: list[Process] = []
    try:
        port = ps.wait_for_output(r"listening on \S+:(\d+);", 120).group(1)
        join = ps.wait_for_output(r"join with: (.*)", 120).group(1)
        assert "--plugin blobplug" in join
        for name, cwd, allow in (("other", theirs, ["--plugin", "blobplug"]), ("unlisted", ours, [])):
            cmd = [sys.executable, "-m", "shield_agent.cli", "join", f"127.0.0.1:{port}", "--token", TOKEN, *allow]
            agents.append(Process(_in(cwd, cmd), tmp_path / f"{name}.log", env={"PYTHONPATH": str(REPO)}))
        for agent in agents:  # both reconnect by default: a final refusal ends them
            assert agent.wait(timeout=240) == 2, agent.output()[-2000:]
        other, unlisted = (a.output() for a in agents)
        assert (f"this agent's copy of blobplug differs from the PS's: digest {agent_digest} here, {ps_digest} on "
                "the PS (--network blobplug:Mlp)") in other
        assert "join with --plugin blobplug" in unlisted
        ps.wait_for_output("could not take the job: this agent's copy of blobplug differs", 30)
    finally:
        for agent in agents:
            agent.stop()
        ps.stop()


def test_the_ps_refuses_an_agent_reporting_another_copy(tmp_path: Path) -> None:
    """An agent that skips its own check and reports another digest in its JOB reply is closed with code job (a
    final refusal), the reason naming the module and both digests."""
    config = ServeConfig(network="tests.plugin_models:Mlp", dataset="tests.plugin_models:blobs", scheme="detox",
                         workers=3, replication=3, max_steps=3, port=0, train_dir=str(tmp_path), join_timeout=120)
    config = resolve_plugins(config, str(tmp_path))

    async def scenario() -> wire.ConnectionClosed:
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        daemon = PSDaemon(config, TOKEN, EventSink(tmp_path / "metrics.jsonl"),
                          on_listening=lambda host, port: listening.set_result(port))
        task = asyncio.get_running_loop().create_task(daemon.run())
        try:
            port = await asyncio.wait_for(listening, 120)
            conn = await wire.connect("127.0.0.1", port, token=TOKEN, role="agent", name="liar")
            job = await conn.recv(timeout=120)
            assert job.kind is Kind.JOB and job.header["network_digest"] == config.network_digest
            await conn.reply(job, Kind.JOB, {"num_params": 1000, "worker": job.header["worker"],
                                             "network_digest": "ab" * 32, "dataset_digest": config.dataset_digest})
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    (await conn.recv(timeout=60)).discard()
            return closed.value
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    closed = asyncio.run(scenario())
    assert closed.remote_code == "job"
    assert (f"the agent's copy of tests.plugin_models differs from the PS's: digest abababababababab there, "
            f"{config.network_digest[:16]} here") in closed.reason


@pytest.mark.slow
def test_a_plugin_that_is_not_repeatable_lands_in_classes_and_the_sketch_vote(tmp_path: Path) -> None:
    """Every agent's gradient carries unrepeatable rounding-size noise: each is its own determinism class, every
    file is disputed and won by the sketch vote, none dropped, and the run learns."""
    run = tmp_path / "run"
    result = _serve(REPO, run, "--network", "tests.plugin_models:NoisyMlp", "--dataset", "tests.plugin_models:blobs",
                    *DETOX6, "--local-agents", "6", "--max-steps", "20", "--eval-freq", "20")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert len(events(run, "classes")[-1]["classes"]) == 6
    steps = events(run, "step")
    assert len(steps) == 20
    assert all(e["files_dropped"] == 0 and e["sketch"]["disputed"] == 2 and e["sketch"]["sketch_won"] == 2
               for e in steps), [(e["files_dropped"], e.get("sketch")) for e in steps]
    assert events(run, "summary")[-1]["reason"] == "completed" and events(run, "eval")[-1]["top1"] > 0.6


@pytest.mark.parametrize("flags,message", [
    (["--network", "blobplug_missing:Mlp"], "--network blobplug_missing:Mlp: no module named 'blobplug_missing' here"),
    (["--network", "blobplug:Missing"], "has no attribute 'Missing'"),
    (["--network", "blobplug:not_a_module"], r"not_a_module(4) returned a list, not a torch.nn.Module"),
    (["--dataset", "blobplug:uneven_shapes"], "train sample 1 has shape (11,), training sample 0 (12,)"),
    (["--network", "blobplug:wrong_logits"], "expected float logits of shape (2, 4)"),
    (["--network", "blobplug Mlp"], "argument --network: unknown network 'blobplug Mlp'"),
    (["--dataset", "blobplug:"], "argument --dataset: 'blobplug:': expected MODULE:CALLABLE"),
])
def test_a_bad_plugin_is_one_line_and_exit_2_before_any_agent_starts(tmp_path: Path, flags: list[str],
                                                                      message: str) -> None:
    here = _plugin_dir(tmp_path / "work")
    run = tmp_path / "run"
    result = _serve(here, run, *PLUG, *flags, "--local-agents", "3", *DETOX6[:2], "--workers", "3", "--replication",
                    "3", timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not run.exists()  # no run directory, so no agent was started


@pytest.mark.slow
def test_a_sweep_trains_a_plugin_and_a_bad_one_stops_it_before_any_run(tmp_path: Path) -> None:
    flags = ["--schemes", "detox", "--workers", "3", "--replication", "3", "--aggregators", "coord-median",
             "--attacks", "alie", "--byzantine", "1", "--max-steps", "4", "--eval-freq", "2", "--batch-size", "30",
             "--dataset", "tests.plugin_models:blobs", "--plain", "--no-plots", "--run-timeout", "400"]

    def sweep(out: Path, network: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shield_ps.cli", "sweep", *flags, "--network", network,
                               "--out", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)

    bad = sweep(tmp_path / "bad", "tests.plugin_models:Missing")
    assert bad.returncode == 2 and not (tmp_path / "bad").exists(), bad.stdout + bad.stderr
    [line] = bad.stderr.strip().splitlines()
    assert line.endswith("module tests.plugin_models (" + str(MODELS) + ") has no attribute 'Missing'")
    done = sweep(tmp_path / "good", "tests.plugin_models:Mlp")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["q"]: r for r in csv.DictReader((tmp_path / "good" / "results.csv").open())}
    assert sorted(rows) == ["0", "1"]  # the point and its q = 0 control, which the sweep adds
    assert all(r["status"] == "completed" and r["steps"] == "4" for r in rows.values())
    assert float(rows["1"]["corrupted_frac"]) == 0
