"""shield-ops parts on their own: config validation, capacity retry and prices (botocore Stubber), local state,
host-key policy against real loopback SSH servers, daemon start/stop on a fake node, reporters, probe parsing."""
from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from shield_ops import deploy, ec2, lifecycle, nodes, provision
from shield_ops.config import load_config, validate
from shield_ops.errors import CapacityError, ConfigError, HostKeyError, ProvisionError, RemoteError, StateError
from shield_ops.nodes import Endpoint, Node, NodeState
from shield_ops.remote import SSHContext, connect, run
from shield_ops.state import ClusterState
from shield_ops.ui import JsonReporter, LiveReporter, OutputFormat, PlainReporter, make_reporter
from tests.test_ops_fakes import FakeCloud

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cluster.toml"


def minimal(**sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "cluster": {"name": "tc", "region": "us-east-1"},
        "network": {"operator_cidr": "198.51.100.7/32", "zones": ["us-east-1a", "us-east-1b"]},
        "nodes": {"ami": "ami-0123456789abcdef0"},
        "ps": {"instance_types": ["c7i.large"]},
        "agents": {"count": 2, "instance_types": ["c7i.large", "c6i.large"]},
    }
    for name, fields in sections.items():
        raw.setdefault(name, {}).update(fields)
    return raw


# ------------------------------------------------------------------------------------------- config
def test_the_example_config_is_valid_and_complete() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.name == "demo" and cfg.agents.count == 15 and cfg.host_keys == "pin"
    assert cfg.state_dir == Path("~/.shield/clusters/demo").expanduser()
    assert cfg.node_names()[:2] == ["ps", "agent-0"] and len(cfg.node_names()) == 16


@pytest.mark.parametrize("raw, field, fix", [
    (minimal(cluster={"name": "Bad_Name"}), "cluster.name", "a-z"),
    (minimal(agents={"count": 0}), "agents.count", "integer"),
    (minimal(network={"operator_cidr": "0.0.0.0/0"}), "network.operator_cidr", "your own address"),
    (minimal(network={"operator_cidr": "not-an-ip"}), "network.operator_cidr", "203.0.113.7/32"),
    (minimal(network={"zones": ["eu-west-1a"]}), "network.zones", "us-east-1a"),
    (minimal(ps={"args": ["--port", "1"]}), "ps.args", "remove it"),
    (minimal(agents={"args": ["--token-file=x"]}), "agents.args", "remove it"),
    (minimal(agents={"args": ["--name", "x"]}), "agents.args", "remove it"),
    (minimal(nodes={"ami": "ubuntu"}), "nodes.ami", "resolve:ssm:"),
    (minimal(ps={"instance_types": []}), "ps.instance_types", "c7i.2xlarge"),
    (minimal(deploy={"host_keys": "none"}), "deploy.host_keys", "pin, tofu"),
    (minimal(deploy={"prepare": "yes"}), "deploy.prepare", "true or false"),
    (minimal(agents={"cont": 3}), "agents.cont", "did you mean 'count'"),
    (minimal(sopt={}), "[sopt]", "did you mean 'spot'"),
])
def test_every_config_error_names_the_field_and_the_fix(raw: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(raw, "c.toml")
    assert field in str(err.value) and fix in str(err.value)


def test_a_missing_required_field_says_where_to_add_it() -> None:
    raw = minimal()
    del raw["ps"]["instance_types"]
    with pytest.raises(ConfigError, match=r"ps\.instance_types: missing; add `instance_types = \.\.\.` under \[ps\]"):
        validate(raw)


def test_set_overrides_fields_with_toml_values() -> None:
    cfg = validate(minimal(), overrides=["agents.count=5", "spot.max_price=0.25", "deploy.pip_args=[\"-q\"]",
                                         "cluster.name=other"])
    assert (cfg.agents.count, cfg.max_price, cfg.pip_args, cfg.name) == (5, 0.25, ("-q",), "other")
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        validate(minimal(), overrides=["count=5"])


def test_unreadable_or_broken_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text(EXAMPLE.read_text().replace("count = 15", "count = -1"))
    done = subprocess.run([sys.executable, "-m", "shield_ops.cli", "up", "-c", str(bad), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "agents.count" in done.stderr


def test_an_unreachable_endpoint_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    done = subprocess.run([sys.executable, "-m", "shield_ops.cli", "status", "-c", str(EXAMPLE), "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr


# ------------------------------------------------------------------------------------------- EC2 (Stubber)
def stubbed(test: Any) -> Any:
    """Run ``test(client, stubber)`` with an aiobotocore EC2 client whose replies come from a Stubber."""
    from aiobotocore.session import get_session
    from aiobotocore.stub import AioStubber

    async def go() -> Any:
        session = get_session()
        session.set_credentials("testing", "testing")
        async with session.create_client("ec2", region_name="us-east-1",
                                         endpoint_url="http://127.0.0.1:9") as client:
            with AioStubber(client) as stubber:
                result = await test(client, stubber)
                stubber.assert_no_pending_responses()
                return result
    return asyncio.run(go())


INSTANCE = {"InstanceId": "i-0123456789abcdef0", "InstanceType": "c6i.large", "State": {"Name": "pending"},
            "Placement": {"AvailabilityZone": "us-east-1b"},
            "Tags": [{"Key": "shield:node", "Value": "agent-0"}, {"Key": "shield:role", "Value": "agent"}]}


def test_capacity_errors_move_on_through_types_and_zones_in_order() -> None:
    cfg = validate(minimal())
    spec = ec2.LaunchSpec("agent-0", "agent", cfg.agents.instance_types, "#cloud-config\n")
    subnets = {"us-east-1a": "subnet-a", "us-east-1b": "subnet-b"}
    retries: list[str] = []

    async def test(client: Any, stubber: Any) -> Node:
        for itype, subnet, code in [("c7i.large", "subnet-a", "InsufficientInstanceCapacity"),
                                    ("c7i.large", "subnet-b", "SpotMaxPriceTooLow"),
                                    ("c6i.large", "subnet-a", "Unsupported")]:
            stubber.add_client_error("run_instances", service_error_code=code,
                                     expected_params=ec2._run_params(cfg, spec, itype, subnet, "sg-1"))
        stubber.add_response("run_instances", {"Instances": [INSTANCE]},
                             ec2._run_params(cfg, spec, "c6i.large", "subnet-b", "sg-1"))
        return await ec2.EC2(client).launch(cfg, spec, subnets, "sg-1", on_retry=retries.append)
    node = stubbed(test)
    assert (node.name, node.zone, node.instance_type) == ("agent-0", "us-east-1b", "c6i.large")
    assert len(retries) == 3 and "InsufficientInstanceCapacity" in retries[0]


def test_capacity_retry_is_bounded_and_says_what_was_tried() -> None:
    cfg = validate(minimal(spot={"max_launch_attempts": 2}))
    spec = ec2.LaunchSpec("ps", "ps", ("c7i.large", "c6i.large"), "")

    async def test(client: Any, stubber: Any) -> None:
        for _ in range(2):
            stubber.add_client_error("run_instances", service_error_code="InsufficientInstanceCapacity")
        await ec2.EC2(client).launch(cfg, spec, {"us-east-1a": "subnet-a", "us-east-1b": "subnet-b"}, "sg-1")
    with pytest.raises(CapacityError, match=r"after 2 attempt\(s\).*c7i.large@us-east-1a.*c7i.large@us-east-1b"):
        stubbed(test)


def test_other_launch_errors_fail_at_once() -> None:
    cfg = validate(minimal())
    spec = ec2.LaunchSpec("ps", "ps", ("c7i.large",), "")

    async def test(client: Any, stubber: Any) -> None:
        stubber.add_client_error("run_instances", service_error_code="VcpuLimitExceeded", service_message="quota")
        await ec2.EC2(client).launch(cfg, spec, {"us-east-1a": "subnet-a", "us-east-1b": "subnet-b"}, "sg-1")
    with pytest.raises(ProvisionError, match="VcpuLimitExceeded: quota") as err:
        stubbed(test)
    assert not isinstance(err.value, CapacityError)


def test_spot_price_history_gives_the_latest_price_and_the_plan_estimate() -> None:
    cfg = validate(minimal())
    old, new = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    history = [{"InstanceType": "c7i.large", "AvailabilityZone": "us-east-1a", "SpotPrice": "0.0500", "Timestamp": old},
               {"InstanceType": "c7i.large", "AvailabilityZone": "us-east-1a", "SpotPrice": "0.0400", "Timestamp": new},
               {"InstanceType": "c7i.large", "AvailabilityZone": "us-east-1b", "SpotPrice": "0.0300", "Timestamp": new}]

    async def test(client: Any, stubber: Any) -> dict[tuple[str, str], float]:
        stubber.add_response("describe_spot_price_history", {"SpotPriceHistory": history})
        return await ec2.EC2(client).spot_prices({"c7i.large"})
    prices = stubbed(test)
    assert prices == {("c7i.large", "us-east-1a"): 0.04, ("c7i.large", "us-east-1b"): 0.03}
    assert ec2.hourly_price(prices, "c7i.large", "us-east-1a") == 0.04
    assert ec2.hourly_price(prices, "c7i.large") == 0.03 and ec2.hourly_price(prices, "x.large") is None
    assert provision._estimate(cfg, prices, {}, cfg.node_names()) == pytest.approx(3 * 0.03)


def test_terminate_refuses_ids_without_the_cluster_tag() -> None:
    cfg = validate(minimal())
    foreign = Node("agent-0", "agent", "i-0aaaaaaaaaaaaaaaa", "c7i.large", "us-east-1a", "running", None, None, None)

    async def test(client: Any, stubber: Any) -> None:
        stubber.add_response("describe_instances", {"Reservations": []})
        await ec2.EC2(client).terminate(cfg, [foreign])
    with pytest.raises(ProvisionError, match="refusing to terminate i-0aaaaaaaaaaaaaaaa"):
        stubbed(test)


def test_user_data_pins_the_host_key() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    text = provision.user_data(validate(minimal()), key)
    assert text.startswith("#cloud-config\n") and "ssh_deletekeys: true" in text
    assert FakeCloud.pinned_host_key(text).export_public_key() == key.export_public_key()


# ------------------------------------------------------------------------------------------- local state
def test_state_creates_secrets_once_with_private_modes(tmp_path: Path) -> None:
    state = ClusterState(tmp_path / "c")
    state.ensure()
    key = state.key_path.read_bytes()
    token = state.token()
    state.ensure()
    assert state.key_path.read_bytes() == key and state.token() == token and len(token.strip()) == 64
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    os.chmod(state.key_path, 0o644)
    with pytest.raises(StateError, match="chmod 600"):
        state.private_key()
    state.destroy()
    assert not state.root.exists()


def test_state_inside_a_git_checkout_is_refused() -> None:
    with pytest.raises(StateError, match="inside the git checkout"):
        ClusterState(REPO / "state").check_location()


# ------------------------------------------------------------------------------------------- SSH host keys
@pytest.fixture
def fake(tmp_path: Path) -> Any:
    cloud = FakeCloud(tmp_path / "nodes", "http://127.0.0.1:9")
    state = ClusterState(tmp_path / "state")
    state.ensure()
    cloud.state_dir = state.root
    nodes.set_resolver(lambda node: Endpoint("127.0.0.1", cloud.nodes[node.instance_id].port, "127.0.0.1"))
    yield cloud, state
    nodes.set_resolver(None)
    for node in cloud.nodes.values():
        subprocess.run(["/bin/sh", "-c", deploy.stop_script()], env={**os.environ, "HOME": str(node.home)},
                       timeout=30)
    cloud.stop()


def a_node(instance_id: str) -> Node:
    return Node("ps", "ps", instance_id, "c7i.large", "us-east-1a", "running", "198.51.100.1", "10.0.0.1", None)


def test_pinned_key_is_required_and_checked(fake: Any) -> None:
    cloud, state = fake
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    cloud.add_node("i-0000000000000000a", host_key)
    node = a_node("i-0000000000000000a")
    with pytest.raises(HostKeyError, match="no pinned host key"):
        asyncio.run(connect(SSHContext(state, "ubuntu", "pin"), node))
    state.record_host_key(node.instance_id, asyncssh.generate_private_key("ssh-ed25519"))  # not the node's key
    with pytest.raises(HostKeyError, match="does not match"):
        asyncio.run(connect(SSHContext(state, "ubuntu", "pin"), node))
    state.record_host_key(node.instance_id, host_key)

    async def ok() -> str:
        async with await connect(SSHContext(state, "ubuntu", "pin"), node) as conn:
            return (await run(conn, "echo pinned")).stdout
    assert asyncio.run(ok()) == "pinned\n"


def test_tofu_records_the_first_key_and_rejects_a_changed_one(fake: Any) -> None:
    cloud, state = fake
    first = asyncssh.generate_private_key("ssh-ed25519")
    cloud.add_node("i-0000000000000000b", first)
    node = a_node("i-0000000000000000b")
    asyncio.run(_close(connect(SSHContext(state, "ubuntu", "tofu"), node)))
    assert state.host_key(node.instance_id).export_public_key() == first.export_public_key()
    cloud.add_node("i-0000000000000000b", asyncssh.generate_private_key("ssh-ed25519"))  # same id, new key
    with pytest.raises(HostKeyError):
        asyncio.run(connect(SSHContext(state, "ubuntu", "tofu"), node))
    asyncio.run(_close(connect(SSHContext(state, "ubuntu", "insecure"), node)))


async def _close(pending: Any) -> None:
    conn = await pending
    conn.close()
    await conn.wait_closed()


def test_ssh_readiness_loop_gives_up_at_its_deadline(fake: Any) -> None:
    from shield_ops.remote import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there
    nodes.set_resolver(lambda node: Endpoint("127.0.0.1", port, "127.0.0.1"))
    attempts: list[str] = []
    with pytest.raises(RemoteError, match="SSH not ready after 1s"):
        asyncio.run(wait_ready(SSHContext(fake[1], "ubuntu", "insecure"), a_node("i-0000000000000000c"), 1.0, 0.1,
                               on_attempt=attempts.append))
    assert attempts


def test_daemons_start_once_listen_and_report_their_death(fake: Any) -> None:
    cloud, state = fake
    key = asyncssh.generate_private_key("ssh-ed25519")
    fake_node = cloud.add_node("i-0000000000000000d", key)
    state.record_host_key("i-0000000000000000d", key)
    (fake_node.home / "shield" / "logs").mkdir(parents=True)
    (fake_node.home / "shield" / "venv" / "bin").mkdir(parents=True)
    (fake_node.home / "shield" / "venv" / "bin" / "python").symlink_to(sys.executable)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]

    async def go() -> tuple[bool, bool]:
        async with await connect(SSHContext(state, "ubuntu", "pin"), a_node("i-0000000000000000d")) as conn:
            first = await deploy.start_daemon(conn, "ps", server)
            await deploy.wait_listening(conn, port, 30)
            second = await deploy.start_daemon(conn, "ps", server)
            await deploy.check_alive(conn, "ps", grace_s=0)
            probe = lifecycle.parse_probe((await run(conn, deploy.PROBE_SCRIPT)).stdout)
            assert probe["daemons"] == {"ps": "running"}
            await run(conn, deploy.stop_script())
            await deploy.start_daemon(conn, "agent", [sys.executable, "-c", "import sys; sys.exit('boom')"])
            with pytest.raises(RemoteError, match="agent exited.*boom"):
                await deploy.check_alive(conn, "agent", grace_s=1.0)
            return first, second
    assert asyncio.run(go()) == (True, False)
    assert (fake_node.home / "shield" / "ps.pid").exists() is False


# ------------------------------------------------------------------------------------------- UI and parsing
def test_plain_reporter_writes_one_line_per_change() -> None:
    out = io.StringIO()
    rep = PlainReporter(out)
    rep.state("ps", NodeState.PENDING, "", "i-1")
    rep.state("ps", NodeState.PENDING, "", "i-1")
    rep.state("ps", NodeState.RUNNING)
    rep.state("agent-0", NodeState.FAILED, "no capacity")
    assert out.getvalue().splitlines() == ["ps [i-1] pending", "ps [i-1] running", "agent-0 failed: no capacity"]
    assert rep.failed == {"agent-0": "no capacity"} and "\x1b" not in out.getvalue()


def test_json_reporter_and_format_choice() -> None:
    out = io.StringIO()
    rep = make_reporter(OutputFormat.JSON, out)
    rep.state("ps", NodeState.STARTED, "already running")
    rep.info("hello")
    first, second = map(json.loads, out.getvalue().splitlines())
    assert (first["node"], first["state"], first["detail"]) == ("ps", "started", "already running")
    assert second["message"] == "hello"
    assert isinstance(make_reporter(OutputFormat.AUTO, io.StringIO()), PlainReporter)
    assert isinstance(rep, JsonReporter)


def test_live_reporter_renders_the_node_table() -> None:
    out = io.StringIO()
    with LiveReporter(out, title="shield cluster t") as rep:
        rep.state("agent-0", NodeState.SSH_READY, "deploying", "i-2")
        rep.state("ps", NodeState.STARTED, "", "i-1")
    text = out.getvalue()
    assert "shield cluster t" in text and "ssh-ready" in text and "started" in text
    assert text.index("ps ") < text.rindex("agent-0")


def test_probe_parsing_ignores_garbage_and_reads_progress() -> None:
    text = "\n".join([
        "deployed abc123", "daemon ps running", "daemon agent stopped", "metric {not json", "metric [1, 2]",
        'metric {"kind": "job", "total_steps": 300}', 'metric {"kind": "step", "step": 12, "loss": 0.5, "lr": 0.01}',
        'metric {"kind": "eval", "step": 10, "top1": 0.9}', "noise"])
    probe = lifecycle.parse_probe(text)
    assert probe["deployed"] == "abc123" and probe["daemons"] == {"ps": "running", "agent": "stopped"}
    assert lifecycle.ps_progress(probe["metrics"]) == {"total_steps": 300, "step": 12, "loss": 0.5, "lr": 0.01,
                                                       "eval_step": 10, "top1": 0.9}
    assert probe["spot"] is None


@pytest.mark.parametrize("line, expected", [
    ('spot {"action": "terminate", "time": "2026-11-29T23:59:00Z"}', {"action": "terminate",
                                                                      "time": "2026-11-29T23:59:00Z"}),
    ("spot {not json", None), ('spot ["terminate"]', None), ('spot {"action": "terminate", "time": 5}', None)])
def test_probe_reads_an_agents_spot_notice_and_nothing_else(line: str, expected: Any) -> None:
    assert lifecycle.parse_probe(f"deployed x\n{line}\n")["spot"] == expected


def test_deploy_hash_ignores_zip_timestamps_but_not_contents(tmp_path: Path) -> None:
    import zipfile

    def wheel(name: str, stamp: tuple[int, ...], body: bytes) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(zipfile.ZipInfo("shield_ops/x.py", stamp), body)
        return path
    cfg = validate(minimal())
    a = wheel("a.whl", (2020, 1, 1, 0, 0, 0), b"x = 1")
    b = wheel("b.whl", (2026, 11, 26, 12, 0, 0), b"x = 1")
    c = wheel("c.whl", (2020, 1, 1, 0, 0, 0), b"x = 2")
    assert deploy.deploy_hash(cfg, a, b"t") == deploy.deploy_hash(cfg, b, b"t")
    assert deploy.deploy_hash(cfg, a, b"t") != deploy.deploy_hash(cfg, c, b"t")
    assert deploy.deploy_hash(cfg, a, b"t") != deploy.deploy_hash(cfg, a, b"u")
    assert deploy.deploy_hash(cfg, a, b"t") != deploy.deploy_hash(validate(minimal(deploy={"pip_args": ["-q"]})), a,
                                                                  b"t")


def test_commands_quote_everything_but_the_remote_home() -> None:
    cfg = validate(minimal(agents={"args": ["--threads", "a b; rm -rf /"]}))
    script = deploy.daemon_script("agent", deploy.agent_command(cfg, "10.0.0.1", "agent-0"))
    assert "'a b; rm -rf /'" in script and '"$HOME/shield/token"' in script
    assert "10.0.0.1:7700" in script and "setsid nohup" in script
    assert deploy.ps_command(cfg)[:2] == ["venv/bin/shield-ps", "serve"] and "--workers" in deploy.ps_command(cfg)


def test_the_node_venv_sees_the_packages_of_a_deploy_python_that_is_itself_a_venv(tmp_path: Path) -> None:
    """The README's test command run from a contributor's venv: the fake nodes' venv (made from that venv's python)
    must see the venv's packages, not only the base interpreter's (``--system-site-packages`` alone gives the base)."""
    parent = tmp_path / "parent"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(parent)], check=True, timeout=120)
    purelib = subprocess.run([str(parent / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(purelib) / "only_in_parent_venv.py").write_text("WHERE = 'parent'\n")
    home = tmp_path / "home"
    (home / "shield").mkdir(parents=True)
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    script = deploy.venv_script(str(parent / "bin/python"), ["--without-pip"])
    subprocess.run(["/bin/sh", "-c", script], check=True, env=env, timeout=300, cwd=home)
    probe = ("import only_in_parent_venv, sys, sysconfig; own = sysconfig.get_paths()['purelib']; "
             f"print(only_in_parent_venv.WHERE, sys.path.index(own) < sys.path.index({purelib!r}))")
    done = subprocess.run([str(home / "shield/venv/bin/python"), "-c", probe], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["parent", "True"]  # the venv's own packages (the wheel) come first
    subprocess.run(["/bin/sh", "-c", script], check=True, env=env, timeout=60, cwd=home)  # idempotent


# ------------------------------------------------------------------------------------------- autostop and cost
def test_autostop_decisions() -> None:
    from shield_ops.supervisor import Limits, Observation, Reason, decide

    def obs(summary: str | None = None, alive: bool = True, hours: float = 0.1, cost_usd: float = 0.0,
            rate: float = 1.0) -> Observation:
        return Observation(summary, alive, hours * 3600, cost_usd, rate, 10.0)
    assert decide(obs(), Limits(True, 1.0, 5.0)) is None
    assert decide(obs("completed"), Limits(True))[0] is Reason.COMPLETED  # type: ignore[index]
    assert decide(obs("failed: no agent"), Limits(True))[0] is Reason.FAILED  # type: ignore[index]
    assert decide(obs("completed"), Limits(False)) is None  # not asked to stop when done
    assert decide(obs(alive=False), Limits(True))[0] is Reason.PS_GONE  # type: ignore[index]
    assert decide(obs(hours=2.0), Limits(max_hours=2.0))[0] is Reason.MAX_HOURS  # type: ignore[index]
    assert decide(obs(hours=1.9), Limits(max_hours=2.0)) is None
    # $1/h, checks every 10 s: stop once the next two checks would reach the budget
    assert decide(obs(cost_usd=4.995), Limits(max_cost=5.0))[0] is Reason.MAX_COST  # type: ignore[index]
    assert decide(obs(cost_usd=4.99), Limits(max_cost=5.0)) is None


def test_last_summary_reads_only_a_bounded_tail(tmp_path: Path) -> None:
    from shield_ops.supervisor import last_summary

    metrics = tmp_path / "metrics.jsonl"
    assert last_summary(metrics) is None
    metrics.write_text('{"kind":"summary","reason":"old"}\n' + '{"kind":"step"}\n' * 5000 + "{broken\n")
    assert last_summary(metrics, tail_bytes=4096) is None  # the old summary is beyond the tail
    metrics.write_text(metrics.read_text() + '{"kind":"summary","reason":"completed"}\n{"kind":"worker"}\n')
    assert last_summary(metrics, tail_bytes=4096) == "completed"


def test_the_ledger_prices_terminated_instances_until_they_ended(tmp_path: Path) -> None:
    from shield_ops.cost import Ledger, projection, transition_time

    launched = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
    assert transition_time("User initiated (2026-01-01 12:00:00 GMT)") == launched + dt.timedelta(hours=2)
    assert transition_time("Server.SpotInstanceTermination") is None
    gone = Node("agent-0", "agent", "i-1", "c5.large", "us-east-1a", "terminated", None, None, launched,
                "User initiated (2026-01-01 12:00:00 GMT)")
    live = Node("agent-0", "agent", "i-2", "c5.large", "us-east-1a", "running", None, None,
                launched + dt.timedelta(hours=2))
    ledger = Ledger(tmp_path / "ledger.json")
    now = (launched + dt.timedelta(hours=3)).timestamp()
    ledger.observe([gone, live], {("c5.large", "us-east-1a"): 0.5}, now)
    ledger.save()
    again = Ledger(tmp_path / "ledger.json")  # persisted: EC2 forgetting i-1 later changes nothing
    again.observe([live], {}, now)
    assert again.total(now) == pytest.approx(0.5 * 2 + 0.5 * 1) and again.hourly() == 0.5
    assert [e.instance_id for e in again.history("agent-0")] == ["i-1", "i-2"]
    progress = {"step": 9, "total_steps": 100, "start_step": 0}
    assert projection(1.5, 0.5, progress, elapsed_s=360.0) == pytest.approx(1.5 + 0.5 * (90 * 36) / 3600)
    assert projection(1.5, 0.5, {"finished": "completed"}, None) == 1.5
    assert projection(1.5, 0.5, {}, None) is None


def test_new_nodes_of_a_role_get_the_type_its_live_nodes_have() -> None:
    cfg = validate(minimal(agents={"count": 3, "instance_types": ["c7i.large", "c6i.large"]}))
    kept = {"ps": Node("ps", "ps", "i-1", "c7i.large", "us-east-1a", "running", None, None, None),
            "agent-0": Node("agent-0", "agent", "i-2", "c6i.large", "us-east-1a", "running", None, None, None)}
    assert provision.pinned_type(cfg, "agent", kept) == "c6i.large"  # not the config's first choice
    assert provision.pinned_type(cfg, "agent", {"ps": kept["ps"]}) is None  # no agent yet: the first one decides
    gone = {"agent-0": Node("agent-0", "agent", "i-2", "c6i.large", "us-east-1a", "shutting-down", None, None, None)}
    assert provision.pinned_type(cfg, "agent", gone) is None
    mixed = validate(minimal(spot={"mixed_types": True}))
    assert provision.pinned_type(mixed, "agent", kept) is None


# ------------------------------------------------------------------------------------------- SSH endpoint modes
def test_endpoint_modes_choose_the_address() -> None:
    node = a_node("i-0000000000000000e")
    try:
        assert nodes.default_resolver(node) == Endpoint("198.51.100.1", 22, "10.0.0.1")
        nodes.set_endpoint_mode("private")
        assert nodes.default_resolver(node) == Endpoint("10.0.0.1", 22, "10.0.0.1")
        nodes.set_endpoint_mode("bastion")
        assert nodes.default_resolver(node).host == "10.0.0.1"
        with pytest.raises(LookupError, match="no private IP"):
            nodes.default_resolver(Node("ps", "ps", "i-1", "t", "z", "running", "198.51.100.1", None, None))
    finally:
        nodes.set_endpoint_mode("public")
    with pytest.raises(ConfigError, match="ssh_bastion: .*needs the jump host"):
        validate(minimal(nodes={"ami": "ami-0123456789abcdef0", "ssh_endpoint": "bastion"}))
    with pytest.raises(ConfigError, match="ssh_bastion_known_hosts"):
        validate(minimal(nodes={"ami": "ami-0123456789abcdef0", "ssh_endpoint": "bastion",
                                "ssh_bastion": "ubuntu@203.0.113.9"}))
    with pytest.raises(ConfigError, match="ssh_endpoint: 'vpn' is not one of public, private, bastion"):
        validate(minimal(nodes={"ami": "ami-0123456789abcdef0", "ssh_endpoint": "vpn"}))


def test_nodes_are_reached_through_a_checked_bastion(fake: Any, tmp_path: Path) -> None:
    """A real asyncssh jump host that forwards TCP (direct-tcpip), in front of a fake node: every node connection goes
    through it; its host key is checked against the configured known_hosts file."""
    cloud, state = fake
    node_key = asyncssh.generate_private_key("ssh-ed25519")
    cloud.add_node("i-0000000000000000f", node_key)
    state.record_host_key("i-0000000000000000f", node_key)
    bastion_key = asyncssh.generate_private_key("ssh-ed25519")
    forwarded: list[tuple[str, int]] = []

    class Jump(asyncssh.SSHServer):
        def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
            forwarded.append((dest_host, dest_port))
            return True

    async def go(known_key: asyncssh.SSHKey) -> str:
        server = await asyncssh.create_server(
            Jump, "127.0.0.1", 0, server_host_keys=[bastion_key],
            authorized_client_keys=asyncssh.import_authorized_keys(state.public_key_openssh().decode()))
        port = server.sockets[0].getsockname()[1]
        known = tmp_path / "bastion_known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {known_key.export_public_key().decode().strip()}\n")
        ctx = SSHContext(state, "ubuntu", "pin", bastion=("jump", "127.0.0.1", port), bastion_known_hosts=known)
        try:
            async with await connect(ctx, a_node("i-0000000000000000f")) as conn:
                return (await run(conn, "echo through-the-bastion")).stdout.strip()
        finally:
            if ctx._tunnel is not None:
                ctx._tunnel.close()
            server.close()
            await server.wait_closed()
    assert asyncio.run(go(bastion_key)) == "through-the-bastion"
    assert forwarded == [("127.0.0.1", cloud.nodes["i-0000000000000000f"].port)]
    with pytest.raises(HostKeyError, match="bastion 127.0.0.1:.* host key not in"):
        asyncio.run(go(asyncssh.generate_private_key("ssh-ed25519")))


def test_host_keys_are_recovered_from_user_data_or_the_console_only() -> None:
    from shield_ops.adopt import key_from_console, key_from_user_data

    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key("openssh").decode().strip()
    found = key_from_user_data(provision.user_data(validate(minimal()), key))
    assert found is not None and found.export_public_key("openssh").decode().strip() == public
    console = ("[  12.3] cloud-init[842]: ci-info: no authorized SSH keys fingerprints found\n"
               "-----BEGIN SSH HOST KEY KEYS-----\necdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-10-0-0-1\n"
               f"{public} root@ip-10-0-0-1\n-----END SSH HOST KEY KEYS-----\n")
    found = key_from_console(console)
    assert found is not None and found.export_public_key("openssh").decode().strip() == public
    assert key_from_console(console.replace("-----END SSH HOST KEY KEYS-----", "")) is None  # an unfinished block
    assert key_from_console(f"login: {public}\n") is None  # a key printed anywhere else is not trusted
    assert key_from_user_data("#cloud-config\nssh_keys:\n  ed25519_public: ssh-ed25519 !!!\n") is None
