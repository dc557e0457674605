"""Limits, lives and reasons on their own: the boot watchdog (the real shell script, run here with a fake
``shutdown``), its limits, the autostop decisions and records, the mirror's run identity, the plan's question, and
the human units of ``status``."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from shield_ops import boot, fmt, provision
from shield_ops.autostop import TAG, Limits, Observation, Reason, Record, decide, from_groups
from shield_ops.config import validate
from shield_ops.mirror import ended, parse_url, run_index
from shield_ops.nodes import Node
from tests.test_ops_fakes import fake_bin, moto_env  # noqa: F401  (moto_env is a fixture)
from tests.test_ops_units import minimal


# ------------------------------------------------------------------------------------------- the boot watchdog
class Booted:
    """A node's boot, here: the user data's bootcmd run with the node's root and home in a temporary directory."""

    def __init__(self, root: Path, limits: boot.BootLimits) -> None:
        self.rootfs, self.home = root / "rootfs", root / "home"
        (self.home / "shield").mkdir(parents=True)
        self.rootfs.mkdir()
        key = asyncssh.generate_private_key("ssh-ed25519")
        text = provision.user_data(validate(minimal()), key, limits)
        (command,) = yaml.safe_load(text)["bootcmd"]
        env = {**os.environ, "SHIELD_ROOTFS": str(self.rootfs), "SHIELD_NODE_HOME": str(self.home),
               "PATH": f"{fake_bin(root)}:{os.environ['PATH']}"}
        subprocess.run(["/bin/sh", "-c", command], env=env, check=True, timeout=60, stdin=subprocess.DEVNULL)
        self.pid = int(self.wait_for(self.rootfs / "var/lib/shield/watchdog.pid", 20).read_text())

    @staticmethod
    def wait_for(path: Path, timeout_s: float) -> Path:
        deadline = time.monotonic() + timeout_s
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return path

    def shutdown_requested(self, timeout_s: float) -> bool:
        return self.wait_for(self.rootfs / "shutdown-requested", timeout_s).exists()

    def stop(self) -> None:
        try:
            os.kill(self.pid, 15)
        except OSError:
            pass


@pytest.fixture
def booted(tmp_path: Path) -> Iterator[Any]:
    made: list[Booted] = []

    def make(limits: boot.BootLimits) -> Booted:
        made.append(Booted(tmp_path / str(len(made)), limits))
        return made[-1]
    yield make
    for node in made:
        node.stop()


def test_the_watchdog_shuts_the_node_down_at_its_deadline(booted: Any) -> None:
    node = booted(boot.BootLimits(deadline=int(time.time()) + 1, idle_s=0, poll_s=1))
    assert node.shutdown_requested(30)
    assert '"reason": "deadline"' in (node.rootfs / "var/lib/shield/watchdog.json").read_text()


def test_the_watchdog_ends_an_idle_node_but_not_a_busy_one(booted: Any) -> None:
    busy = booted(boot.BootLimits(deadline=0, idle_s=2, poll_s=1))
    ps = subprocess.Popen(["sleep", "60"])  # a PS process in the pidfile: the node is busy
    try:
        (busy.home / "shield/ps.pid").write_text(f"{ps.pid}\n")
        idle = booted(boot.BootLimits(deadline=0, idle_s=2, poll_s=1))
        assert idle.shutdown_requested(30)
        assert '"reason": "idle"' in (idle.rootfs / "var/lib/shield/watchdog.json").read_text()
        assert not (busy.rootfs / "shutdown-requested").exists()  # busy all along
    finally:
        ps.kill()
        ps.wait()
    assert busy.shutdown_requested(30)  # idle once its PS is gone


def test_a_later_up_moves_the_limits_of_a_running_node(booted: Any) -> None:
    node = booted(boot.BootLimits(deadline=0, idle_s=0, poll_s=1))
    time.sleep(1.5)
    assert not (node.rootfs / "shutdown-requested").exists()
    (node.home / "shield/limits").write_text(boot.BootLimits(int(time.time()), 0, 1).text())  # what `up` writes
    assert node.shutdown_requested(30)


def test_boot_limits_come_from_the_life_and_the_budget() -> None:
    cfg = validate(minimal(autostop={"max_hours": 2, "max_cost": 3.0, "interval_s": 10, "idle_minutes": 15}))
    grace = boot.GRACE_S + 2 * 10
    # $1/h for the cluster, $1 already spent: the budget lasts 2 more hours; the life started 1 h ago: 1 h left
    limits = boot.limits_for(cfg, now=10_000.0, life_start=6_400.0, spent_usd=1.0, usd_per_hour=1.0)
    assert limits == boot.BootLimits(int(6_400 + 2 * 3600 + grace), 15 * 60, 10)
    assert boot.limits_for(cfg, 10_000.0, None, 2.5, 1.0).deadline == int(10_000 + 0.5 * 3600 + grace)
    cheap = validate(minimal(autostop={"max_cost": 3.0}))
    assert boot.limits_for(cheap, 10_000.0, None, 0.0, None).deadline == 0  # no price: only the supervisor
    assert boot.limits_for(validate(minimal()), 0.0, None, 0.0, 1.0) == boot.BootLimits(0, 30 * 60, 10)
    assert boot.limits_for(validate(minimal(autostop={"idle_minutes": 0})), 0.0, None, 0.0, 1.0).idle_s == 0


def test_user_data_starts_the_watchdog_at_boot_and_instances_terminate_on_shutdown() -> None:
    from shield_ops import ec2

    cfg = validate(minimal(autostop={"max_hours": 1}))
    text = provision.user_data(cfg, asyncssh.generate_private_key("ssh-ed25519"), boot.BootLimits(123, 60, 5))
    doc = yaml.safe_load(text)
    assert doc["ssh_keys"]["ed25519_public"].startswith("ssh-ed25519 ")  # the pinned key is still there
    assert "deadline=123\nidle_s=60\npoll_s=5\n" in doc["bootcmd"][0] and len(text) < 16384
    spec = ec2.LaunchSpec("ps", "ps", ("c7i.large",), text)
    assert ec2._run_params(cfg, spec, "c7i.large", "subnet-a", "sg-1")["InstanceInitiatedShutdownBehavior"] == \
        "terminate"


# ------------------------------------------------------------------------------------------- autostop
def test_a_ps_that_never_starts_ends_the_cluster_only_under_down_when_done() -> None:
    def obs(**kw: Any) -> Observation:
        return Observation(None, False, 60.0, 0.0, 1.0, 10.0, **kw)
    done = Limits(down_when_done=True)
    assert decide(obs(ps="waiting"), done) is None  # up is still deploying
    assert decide(obs(ps="waiting", start_overdue=True), done)[0] is Reason.FAILED_START  # type: ignore[index]
    verdict = decide(obs(ps="exited", run_began=False, ps_log="error: --batch-size 1"), done)
    assert verdict is not None and verdict[0] is Reason.FAILED_START and "--batch-size 1" in verdict[1]
    assert decide(obs(ps="exited", run_began=True), done)[0] is Reason.PS_GONE  # type: ignore[index]
    assert decide(obs(ps="exited", run_began=False), Limits(max_cost=5.0)) is None  # not asked


def test_the_record_fits_a_tag_and_comes_back_from_the_security_group() -> None:
    record = Record("max-cost", "cost $0.0123 reaches --max-cost $0.02 " + "x" * 400, 1_765_000_000.0, 0.0123456,
                    "run-2", 40, "s3://b/p/sg-1/run-2/checkpoints/step-00000040.npz", "sg-1", {"max_cost": 0.02})
    compact = record.compact()
    assert len(compact) <= 255
    back = from_groups([{"GroupId": "sg-0", "Tags": []},
                        {"GroupId": "sg-1", "Tags": [{"Key": TAG, "Value": compact}]}])
    assert back is not None and (back.reason, back.run, back.last_checkpoint, back.life) == ("max-cost", "run-2", 40,
                                                                                             "sg-1")
    assert back.cost_usd == pytest.approx(0.01235) and back.why.startswith("cost $0.0123")
    assert Record.parse(record.to_json()) == record
    line = record.line()
    assert "max-cost at 2025-12-06" in line and "final cost $0.0123" in line and "step 40 of run-2" in line
    assert Record.parse("{not json") is None and Record.parse('{"reason": 1}') is None
    assert from_groups([{"GroupId": "sg-2", "Tags": [{"Key": TAG, "Value": "[1]"}]}]) is None


# ------------------------------------------------------------------------------------------- mirror identity
def test_a_run_has_ended_after_its_summary_unless_a_job_follows() -> None:
    job, step = b'{"kind": "job", "config_hash": "ab"}', b'{"kind": "step", "step": 3}'
    assert ended(b"\n".join([job, step, b'{"kind": "summary", "reason": "completed"}'])) == "completed"
    assert ended(b"\n".join([job, b'{"kind": "summary", "reason": "failed: no agent"}'])) == "failed: no agent"
    assert ended(b"\n".join([job, b'{"kind": "summary", "reason": "interrupted"}'])) is None  # resumable
    assert ended(b"\n".join([job, b'{"kind": "summary", "reason": "completed"}', job, step])) is None
    assert ended(b"garbage\n[1]\n") is None
    assert [run_index(n) for n in ("run", "run-2", "run-17")] == [1, 2, 17]
    assert parse_url("s3://my-runs/shield/demo/sg-0abc/run-2/") == ("my-runs", "shield/demo/sg-0abc/run-2")
    for bad in ("s3:/x/y", "https://b/k", "s3://B/k", "s3://bucket"):
        with pytest.raises(ValueError, match="s3://BUCKET/PREFIX/LIFE/RUN"):
            parse_url(bad)


# ------------------------------------------------------------------------------------------- plans and units
def test_a_terminate_only_plan_asks_about_terminating() -> None:
    cfg = validate(minimal())
    gone = Node("agent-2", "agent", "i-0b", "c7i.large", "us-east-1a", "running", None, None, None)
    plan = provision.Plan("vpc-1", {"us-east-1a": "subnet-a"}, {"KeyName": "k"}, {"GroupId": "sg-1"}, {}, [],
                          [gone])
    assert plan.question(cfg) == "terminate 1 instance(s) (agent-2 i-0b) for cluster tc?"
    fresh = provision.Plan("vpc-1", {}, None, None, {}, ["ps", "agent-0"])
    assert fresh.question(cfg) == ("create key pair, security group, 2 spot instance(s) (ps, agent-0) for cluster "
                                   "tc?")


def test_the_plan_shows_limits_and_mirror() -> None:
    lines = provision.guard_lines(validate(minimal(autostop={"max_cost": 25, "down_when_done": True},
                                                   mirror={"bucket": "my-runs"})), "s3://old/p/sg-1/run")
    text = "\n".join(lines)
    assert "down when the run ends or its PS fails to start" in text and "at most $25.00" in text
    assert "from boot by each instance's own watchdog" in text and "30m 00s idle" in text
    assert "mirror: s3://my-runs/shield/tc/<life>/<run>" in text and "resume: s3://old/p/sg-1/run" in text
    assert "limits: none" in "\n".join(provision.guard_lines(validate(minimal())))


def test_human_units() -> None:
    assert [fmt.usd(v) for v in (0, 0.0000123456, 0.0123, 0.5, 12.345, 1234.5, None)] == [
        "$0", "$0.0000123", "$0.0123", "$0.500", "$12.35", "$1,234.50", "-"]
    assert [fmt.duration(s) for s in (5, 65, 3725, 90061, None)] == ["5s", "1m 05s", "1h 02m", "1d 01h", "-"]
    assert fmt.sig(0.30103123456789, 4) == "0.3010" and fmt.sig(1234567.0, 3) == "1234567"
    assert fmt.sig(2.5e-9, 3) == "2.50e-09" and fmt.percent(0.9712) == "97.1%"
    assert fmt.ago(100.0, now=160.0) == "1m 00s ago" and fmt.when(0) == "1970-01-01 00:00 UTC"


def test_the_dry_run_says_it_needs_credentials(tmp_path: Path) -> None:
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
               AWS_ENDPOINT_URL_EC2="http://127.0.0.1:9")
    example = Path(__file__).resolve().parents[1] / "examples" / "cluster.toml"
    done = subprocess.run([sys.executable, "-m", "shield_ops.cli", "up", "-c", str(example), "--dry-run",
                           "--state-dir", str(tmp_path / "s")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--dry-run included, and found no AWS credentials" in done.stderr


def test_the_watchdog_reason_is_published_before_the_node_stops(moto_env: str, tmp_path: Path) -> None:  # noqa: F811
    """What the watchdog runs on a deployed PS node before `shutdown`: the record goes to the life's security group."""
    import sys

    from shield_ops.supervisor import SupervisorConfig
    from tests.test_ops_fakes import boto_client

    ec2 = boto_client(moto_env)
    group = ec2.create_security_group(GroupName="shield-rec", Description="a life", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "shield:cluster", "Value": "rec"}]}])["GroupId"]
    (tmp_path / "supervisor.json").write_text(SupervisorConfig("rec", "us-east-1", "run", Limits(), 1.0, {},
                                                               group).to_json())
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/step-00000040.npz").write_bytes(b"not read")
    done = subprocess.run([sys.executable, "-m", "shield_ops.supervisor", "--config", str(tmp_path / "supervisor.json"),
                           "--record", "idle"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = from_groups(ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"])
    assert record is not None and (record.reason, record.last_checkpoint, record.life) == ("idle", 40, group)
    assert "watchdog" in record.why


def test_resume_from_takes_only_an_s3_run_url(capsys: pytest.CaptureFixture[str]) -> None:
    from shield_ops import cli

    example = Path(__file__).resolve().parents[1] / "examples" / "cluster.toml"
    with pytest.raises(SystemExit) as stop:
        cli.main(["up", "-c", str(example), "--resume-from", "https://my-runs/shield/demo/run"])
    assert stop.value.code == 2
    assert "--resume-from: 'https://my-runs/shield/demo/run' is not s3://BUCKET/PREFIX/LIFE/RUN" in \
        capsys.readouterr().err
    args = cli.build_parser().parse_args(["up", "-c", str(example), "--resume-from", "s3://my-runs/shield/d/sg-1/run/"])
    assert args.resume_from == "s3://my-runs/shield/d/sg-1/run"


class _EmptyCloud:
    """The two verbs a supervisor's look uses, over a cloud with no instances (the projection is what is tested)."""

    async def find_instances(self, cluster: Any, include_gone: bool = False) -> list[Any]:
        return []

    async def spot_prices(self, instance_types: set[str]) -> dict[tuple[str, str], float]:
        return {}


def test_max_cost_is_projected_over_the_gap_between_looks_actually_seen(tmp_path: Path) -> None:
    """On a busy PS node a look can take longer than the configured interval: the spend until the next checks is
    projected over the gap seen between the last two looks (a supervisor that projected over the sleep alone stopped
    a test cluster at $6.03e-7 of a $6e-7 budget on a loaded machine)."""
    import asyncio

    from shield_ops.supervisor import Supervisor, SupervisorConfig

    config = tmp_path / "supervisor.json"
    config.write_text(SupervisorConfig("c", "us-east-1", "run", Limits(False, None, 1.0), interval_s=0.5).to_json())
    supervisor = Supervisor(config, tmp_path)
    first = asyncio.run(supervisor.observe(_EmptyCloud(), supervisor.config()))  # type: ignore[arg-type]
    assert first.interval_s == 0.5
    assert supervisor._last_look is not None
    supervisor._last_look -= 3.0  # the previous look was 3 s ago: the look in between ran late
    late = asyncio.run(supervisor.observe(_EmptyCloud(), supervisor.config()))  # type: ignore[arg-type]
    assert late.interval_s >= 3.0
    assert decide(Observation(None, True, 10.0, 0.9, 120.0, late.interval_s), Limits(False, None, 1.0)) is not None
    assert decide(Observation(None, True, 10.0, 0.9, 120.0, 0.5), Limits(False, None, 1.0)) is None
