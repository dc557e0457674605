"""Deploy and start the shield runtime on nodes over SSH: wheel, venv, data, then daemons with pidfiles and logs.

Remote layout (relative to the login directory): ``shield/{venv,wheels,data,run,logs}``, ``shield/token`` (0600),
``shield/DEPLOYED`` (the deploy hash, so an unchanged node is skipped), ``shield/{ps,agent}.pid``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from shield_ops.config import ClusterConfig
from shield_ops.errors import RemoteError, ShieldOpsError
from shield_ops.remote import quote, run, upload, write_text

if TYPE_CHECKING:
    from shield_ops.boot import BootLimits
    from shield_ops.mirror import Restored

log = logging.getLogger(__name__)

ROOT = "shield"
HOME_ROOT = '"$HOME/shield"'
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                                 ".hypothesis", ".benchmarks", "runs", ".whl", ".gl", "*.png", ".venv", "venv")


def project_root() -> Path:
    """The source checkout this shield_ops was imported from."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "setup.cfg").exists() and not (root / "pyproject.toml").exists():
        raise ShieldOpsError(f"{root} is not a source checkout of shield; pass --wheel PATH to deploy a built wheel")
    return root


def build_wheel(out_dir: Path, source: Path | None = None) -> Path:
    """``pip wheel --no-deps`` of this project, built from a scratch copy so the checkout is left untouched."""
    source = source or project_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shield-wheel-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, ignore=IGNORED)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir),
               str(copy)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ShieldOpsError(f"building the wheel failed: {done.stderr.strip().splitlines()[-1:]}")
    wheels = sorted(out_dir.glob("shield-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise ShieldOpsError(f"pip wheel produced no shield-*.whl in {out_dir}")
    return wheels[-1]


def wheel_digest(wheel: Path) -> bytes:
    """A hash of the wheel's member names and contents: rebuilding the same source gives the same digest even
    though the zip's timestamps differ."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(archive.read(name)).digest())
    return digest.digest()


def deploy_hash(cfg: ClusterConfig, wheel: Path, token: bytes) -> str:
    """What a deployed node must match to be skipped: the wheel's contents, the deploy fields and the token."""
    digest = hashlib.sha256(wheel_digest(wheel))
    digest.update(cfg.deploy_fingerprint().encode())
    digest.update(hashlib.sha256(token).digest())
    return digest.hexdigest()[:32]


def _data_files(cfg: ClusterConfig) -> list[tuple[Path, str]]:
    if cfg.upload_data is None:
        return []
    return [(p, f"{ROOT}/data/{p.name}") for p in sorted(cfg.upload_data.iterdir()) if p.is_file()]


async def deploy_node(conn: asyncssh.SSHClientConnection, cfg: ClusterConfig, wheel: Path, token_path: Path,
                      digest: str) -> bool:
    """Install the wheel into ``shield/venv`` and prepare the data; False when the node already has ``digest``."""
    await run(conn, f"mkdir -p {ROOT}/wheels {ROOT}/logs {ROOT}/data {ROOT}/run && chmod 700 {ROOT} && "
                    "{ command -v cloud-init >/dev/null 2>&1 && cloud-init status --wait >/dev/null 2>&1; true; }",
              what="preparing directories", timeout=900)
    marker = await run(conn, f"cat {ROOT}/DEPLOYED 2>/dev/null || true", what="reading the deploy marker")
    if marker.stdout.strip() == digest:
        return False
    await upload(conn, [(wheel, f"{ROOT}/wheels/{wheel.name}")] + _data_files(cfg))
    await upload(conn, [(token_path, f"{ROOT}/token")], mode=0o600)
    await run(conn, venv_script(cfg.python, cfg.venv_args), what="creating the venv", timeout=300)
    install = (f"cd {HOME_ROOT} && {{ venv/bin/python -m pip uninstall -y -q shield >/dev/null 2>&1; true; }} && "
               f"venv/bin/python -m pip install -q --disable-pip-version-check {quote(cfg.pip_args)} "
               f"wheels/{quote([wheel.name])}")
    await run(conn, install, what="installing the wheel", timeout=1800)
    if cfg.prepare:
        await run(conn, f"cd {HOME_ROOT} && venv/bin/shield-agent prepare --dataset {quote([cfg.dataset])} "
                        f"--data-dir \"$HOME/{ROOT}/data\"", what="shield-agent prepare", timeout=1800)
    await run(conn, f"echo {digest} > {ROOT}/DEPLOYED", what="writing the deploy marker")
    return True


#: run by ``deploy.python``: its site-packages when it is itself a virtual environment (else nothing).
PARENT_SITE = "import site, sys; print('\\n'.join(site.getsitepackages()) if sys.prefix != sys.base_prefix else '')"
#: run by the new venv's python with those directories on stdin: one ``.pth`` listing them (plain path lines, so
#: sys.path gets them after the venv's own site-packages and no ``.pth`` in them, e.g. an editable install, runs).
WRITE_PTH = ("import pathlib, sys, sysconfig; dirs = [d for d in sys.stdin.read().splitlines() if d.strip()]; "
             "dirs and pathlib.Path(sysconfig.get_paths()['purelib'], 'shield-parent-site.pth')"
             ".write_text(''.join(d + chr(10) for d in dirs))")


def venv_script(python: str, venv_args: tuple[str, ...] | list[str]) -> str:
    """Create ``shield/venv`` once with ``--system-site-packages``, seeing every package ``python`` sees.

    ``--system-site-packages`` exposes the *base* interpreter's packages: when ``deploy.python`` is itself a virtual
    environment (a contributor's venv running the tests, or a prepared image's), its packages would be invisible, so
    its site-packages directories are appended to the new venv's path with a ``.pth`` file.
    """
    py = quote([python])
    return (f"cd {HOME_ROOT} && {{ [ -x venv/bin/python ] || {{ {py} -m venv --system-site-packages "
            f"{quote(venv_args)} venv && {py} -c {quote([PARENT_SITE])} | "
            f"venv/bin/python -c {quote([WRITE_PTH])}; }}; }}")


def ps_command(cfg: ClusterConfig, run_dir: str = "run", resume: bool = False, host: str = "0.0.0.0") -> list[str]:
    """``shield-ps serve`` on the PS node, listening on ``host`` (its private address, which the agents dial; on EC2
    the public address is translated to it, so ``shield-ps watch`` from the operator still reaches it)."""
    extra = ["--resume"] if resume and "--resume" not in cfg.ps.args else []
    return (["venv/bin/shield-ps", "serve", "--host", host, "--port", str(cfg.ps_port),
             "--token-file", f"$HOME/{ROOT}/token", "--data-dir", f"$HOME/{ROOT}/data",
             "--train-dir", f"$HOME/{ROOT}/{run_dir}", "--workers", str(cfg.agents.count)] + list(cfg.ps.args) + extra)


#: where an agent started with ``--spot-watch`` writes EC2's interruption notice (the probe reads it back)
SPOT_NOTICE = "spot-notice"


def agent_command(cfg: ClusterConfig, ps_host: str, name: str) -> list[str]:
    """The agent's command line; with ``--spot-watch`` in ``agents.args`` it also writes the notice to
    :data:`SPOT_NOTICE`, so that ``up --watch`` replaces the node as soon as the notice comes."""
    notice = ["--spot-notice-file", f"$HOME/{ROOT}/{SPOT_NOTICE}"] if "--spot-watch" in cfg.agents.args else []
    return (["venv/bin/shield-agent", "join", f"{ps_host}:{cfg.ps_port}", "--token-file", f"$HOME/{ROOT}/token",
             "--data-dir", f"$HOME/{ROOT}/data", "--name", name] + notice + list(cfg.agents.args))


def _shell(args: list[str]) -> str:
    # "$HOME/..." must expand remotely; everything else is quoted.
    return " ".join(f'"{a}"' if a.startswith("$HOME/") else quote([a]) for a in args)


#: a pid names a live daemon: it exists and is not a zombie (a container's init may not reap).
ALIVE = "alive() { kill -0 \"$1\" 2>/dev/null && ! grep -qs ') Z ' \"/proc/$1/stat\"; }; "


def daemon_script(role: str, args: list[str]) -> str:
    """Start ``args`` as a daemon (new session, logs, pidfile) unless the pidfile names a live process."""
    pid, log_file = f"{role}.pid", f"logs/{role}.log"
    return (f"{ALIVE}cd {HOME_ROOT} && if [ -f {pid} ] && alive \"$(cat {pid})\"; then echo running; else "
            f"setsid nohup {_shell(args)} > {log_file} 2>&1 < /dev/null & echo $! > {pid}; echo started; fi")


async def stop_if_target_changed(conn: asyncssh.SSHClientConnection, target: str) -> bool:
    """Record the PS address the agent joins (``shield/agent.target``); a live agent started towards another address
    (a replaced PS) is stopped so that it is started again towards ``target``. True when it was stopped."""
    script = (f"{ALIVE}cd {HOME_ROOT} && old=$(cat agent.target 2>/dev/null); echo {quote([target])} > agent.target; "
              "if [ -n \"$old\" ] && [ \"$old\" != " + quote([target])
              + " ] && alive \"$(cat agent.pid 2>/dev/null)\"; "
              "then p=$(cat agent.pid); kill -TERM -- -$p 2>/dev/null || kill -TERM $p; rm -f agent.pid; "
              "echo stopped; fi")
    return (await run(conn, script, what="checking the agent's PS address")).stdout.strip() == "stopped"


def alive_script(role: str) -> str:
    return (f"{ALIVE}cd {HOME_ROOT} && alive \"$(cat {role}.pid 2>/dev/null)\" || "
            f"{{ echo '{role} exited:'; tail -n 15 logs/{role}.log; exit 3; }}")


def ended_ps_exit_script(wait_s: float) -> str:
    """Wait up to ``wait_s`` for a PS whose current run has ended (its last ``job`` or ``summary`` event is a
    summary) to exit: it writes its summary a moment before it exits, and an ``up`` in that moment would take the
    ending PS for a running one. Exits 0 at once when the PS is gone or its run has not ended."""
    metrics = '"$d/metrics.jsonl"'
    return (f"{ALIVE}cd {HOME_ROOT} 2>/dev/null || exit 0; {CURRENT_RUN}p=$(cat ps.pid 2>/dev/null); "
            "alive \"$p\" || exit 0; "
            f"grep -sE '\"kind\": ?\"(job|summary)\"' {metrics} | tail -n 1 | grep -qE '\"kind\": ?\"summary\"' "
            f"|| exit 0; i=0; while alive \"$p\" && [ $i -lt {max(1, round(wait_s * 5))} ]; do sleep 0.2; "
            "i=$((i+1)); done; true")


async def start_daemon(conn: asyncssh.SSHClientConnection, role: str, args: list[str]) -> bool:
    """True when started now, False when it was already running."""
    result = await run(conn, daemon_script(role, args), what=f"starting {role}")
    return result.stdout.strip().endswith("started")


async def wait_listening(conn: asyncssh.SSHClientConnection, port: int, timeout_s: float,
                         host: str = "127.0.0.1") -> None:
    """Poll on the PS node until its port accepts connections at ``host`` (the address it binds), failing early
    (with the log) if it exits."""
    if not re.match(r"^[0-9a-fA-F.:]+$|^[A-Za-z0-9.-]+$", host):
        raise RemoteError(f"odd PS address {host!r}")
    probe = (f"{alive_script('ps')} && venv/bin/python -c "
             f"\"import socket; socket.create_connection(('{host}', {port}), 2).close()\" 2>/dev/null")
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await run(conn, probe, check=False, what="probing the PS port")
        if result.exit_status == 0:
            return
        if result.exit_status == 3:
            raise RemoteError(" | ".join(result.stdout.strip().splitlines()[-6:]))
        if asyncio.get_running_loop().time() > deadline:
            raise RemoteError(f"the PS did not listen on port {port} within {timeout_s:.0f}s; "
                              "see `shield-ops logs`, or raise deploy.start_timeout")
        await asyncio.sleep(1.0)


def job_count_script(run_dir: str) -> str:
    """How many ``job`` events the run's metrics hold (a PS writes one once its model and checkpoint are accepted)."""
    return f"cd {HOME_ROOT} && grep -cE '\"kind\": ?\"job\"' {quote([run_dir])}/metrics.jsonl 2>/dev/null || true"


async def job_count(conn: asyncssh.SSHClientConnection, run_dir: str) -> int:
    out = (await run(conn, job_count_script(run_dir), check=False, what="reading the run's job events")).stdout
    return int(out.strip()) if out.strip().isdigit() else 0


async def wait_started(conn: asyncssh.SSHClientConnection, port: int, timeout_s: float, host: str, run_dir: str,
                       jobs_before: int) -> None:
    """Wait until the PS listens and has begun its run (a new ``job`` event: its model loaded, its checkpoint, if
    resumed, verified against its configuration), failing early with its log when it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    await wait_listening(conn, port, timeout_s, host)
    while await job_count(conn, run_dir) <= jobs_before:
        result = await run(conn, alive_script("ps"), check=False, what="checking the PS")
        if result.exit_status != 0:
            raise RemoteError(" | ".join(result.stdout.strip().splitlines()[-6:]))
        if loop.time() > deadline:
            raise RemoteError(f"the PS did not begin its run within {timeout_s:.0f}s; see `shield-ops logs`, or raise "
                              "deploy.start_timeout")
        await asyncio.sleep(0.5)


async def check_alive(conn: asyncssh.SSHClientConnection, role: str, grace_s: float = 1.0) -> None:
    await asyncio.sleep(grace_s)
    result = await run(conn, alive_script(role), check=False, what=f"checking {role}")
    if result.exit_status != 0:
        raise RemoteError(" | ".join(result.stdout.strip().splitlines()[-6:]))


ROLES = ("ps", "agent", "supervisor")


#: sets ``d`` to the current run directory on the PS node (``shield/RUN`` names it; ``run`` until a second run).
CURRENT_RUN = "d=$(head -n 1 RUN 2>/dev/null | tr -cd 'a-z0-9-'); d=${d:-run}; "


def probe_script() -> str:
    """What ``status`` asks a node: deploy marker, daemons, the current run's job event and last events, the
    supervisor's state, an agent's spot interruption notice (each line prefixed with its kind; everything read back
    is parsed as untrusted text)."""
    metrics = '"$d/metrics.jsonl"'
    return (
        f"{ALIVE}cd {HOME_ROOT} 2>/dev/null || exit 0; {CURRENT_RUN}echo \"deployed $(cat DEPLOYED 2>/dev/null)\"; "
        "echo \"run $d\"; "
        f"for r in {' '.join(ROLES)}; do [ -f $r.pid ] || continue; "
        "if alive \"$(cat $r.pid)\"; then echo \"daemon $r running\"; else echo \"daemon $r stopped\"; fi; "
        f"done; if [ -f {metrics} ]; then head -n 3 {metrics} | cut -c1-65536 | grep -E '\"kind\": ?\"job\"' | "
        f"sed 's/^/metric /'; tail -n 500 {metrics} | cut -c1-65536 | "
        "grep -E '\"kind\": ?\"(job|step|eval|summary)\"' | tail -n 6 | sed 's/^/metric /'; fi; "
        "[ -f supervisor-state.json ] && head -c 65536 supervisor-state.json | tr -d '\\n' | sed 's/^/autostop /' "
        f"&& echo; [ -f {SPOT_NOTICE} ] && head -c 512 {SPOT_NOTICE} | tr -d '\\n' | sed 's/^/spot /' && echo; true"
    )


async def choose_run_dir(conn: asyncssh.SSHClientConnection, resume: bool) -> tuple[str, bool]:
    """The train dir for a PS about to start: the current one, or (when it already holds a run and ``--resume`` is
    not asked for) the next free ``run-N``, recorded in ``shield/RUN``. Returns (directory, whether it is new)."""
    script = (f"cd {HOME_ROOT} && {CURRENT_RUN}if [ {0 if resume else 1} = 1 ] && [ -s \"$d/metrics.jsonl\" ]; then "
              "n=2; while [ -e run-$n ]; do n=$((n+1)); done; d=run-$n; mkdir -p $d; echo $d > RUN; echo \"new $d\"; "
              "else echo \"same $d\"; fi")
    word, _, name = (await run(conn, script, what="choosing the run directory")).stdout.strip().partition(" ")
    return name, word == "new"


PROBE_SCRIPT = probe_script()


def stop_script() -> str:
    """Stop every daemon (their whole sessions) and remove the pidfiles."""
    return (f"cd {HOME_ROOT} 2>/dev/null || exit 0; for r in {' '.join(ROLES)}; do [ -f $r.pid ] || continue; "
            "p=$(cat $r.pid); kill -TERM -- -$p 2>/dev/null || kill -TERM $p 2>/dev/null; rm -f $r.pid; done; true")


def supervisor_config(cfg: ClusterConfig, run_dir: str, incarnation: str = "", ps_start_by: float = 0.0) -> str:
    """The ``supervisor.json`` for the PS node (see :mod:`shield_ops.supervisor`); the mirror is this life's
    (``incarnation``: the cluster's security group)."""
    from shield_ops.supervisor import Limits, SupervisorConfig

    mirror = ({"bucket": cfg.mirror_bucket, "prefix": cfg.mirror_prefix, "region": cfg.region, "life": incarnation}
              if cfg.mirrored else {})
    return SupervisorConfig(cfg.name, cfg.region, run_dir, Limits(cfg.down_when_done, cfg.max_hours, cfg.max_cost),
                            cfg.autostop_interval, mirror, incarnation, ps_start_by).to_json()


def supervisor_command() -> list[str]:
    return ["venv/bin/python", "-m", "shield_ops.supervisor", "--config", f"$HOME/{ROOT}/supervisor.json"]


async def has_run(conn: asyncssh.SSHClientConnection) -> bool:
    """Whether the PS node already holds a run (``shield/RUN``, or a started ``shield/run``)."""
    fresh = await run(conn, f"cd {HOME_ROOT} && [ ! -f RUN ] && [ ! -s run/metrics.jsonl ]", check=False)
    return fresh.exit_status != 0


async def restore_run(conn: asyncssh.SSHClientConnection, cfg: ClusterConfig, incarnation: str,
                      resume_from: str | None = None) -> Restored | None:
    """On a PS node without any run (a new cluster, or a replacement PS): with ``[mirror]``, this life's current run
    when it can go on, else a fresh run name unused in the life; with ``resume_from``, that run of another life.
    None when there is nothing to ask the mirror (no mirror, no ``resume_from``), or the node already has a run."""
    from shield_ops.mirror import Restored

    if not (cfg.mirrored or resume_from):
        return None
    if await has_run(conn):
        if resume_from:
            raise RemoteError("--resume-from applies to a PS node without a run (a new cluster, or a replacement "
                              "PS); this one has a run already: `down` the cluster, then `up --resume-from`")
        return None
    await write_text(conn, f"{ROOT}/supervisor.json", supervisor_config(cfg, "run", incarnation))
    source = f" --from {quote([resume_from])}" if resume_from else ""
    out = await run(conn, f"cd {HOME_ROOT} && venv/bin/python -m shield_ops.mirror restore --config supervisor.json"
                          f"{source}", check=False, what="restoring the run from S3", timeout=1800)
    last = (out.stdout.strip().splitlines() or [""])[-1]
    word, _, rest = last.partition(" ")
    fields = rest.split(" ")
    if word == "refused" or out.exit_status != 0:
        tail = " | ".join((out.stderr.strip() or out.stdout.strip()).splitlines()[-3:])
        raise RemoteError(f"restoring from S3 failed: {rest if word == 'refused' else tail}")
    if not fields or not re.match(r"^run(-\d{1,6})?$", fields[0]):
        raise RemoteError(f"restoring from S3: unexpected answer {last[:200]!r}")
    if word == "fresh":
        return Restored(fields[0], False)
    step = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    config = fields[2] if len(fields) > 2 and fields[2] != "-" else None
    return Restored(fields[0], True, step, config, fields[3] if len(fields) > 3 else "")


async def write_limits(conn: asyncssh.SSHClientConnection, limits: BootLimits) -> None:
    """The node's watchdog limits (``shield/limits``, read at its next look; writing it counts as activity)."""
    await write_text(conn, f"{ROOT}/limits", limits.text())


async def start_supervisor(conn: asyncssh.SSHClientConnection, cfg: ClusterConfig, run_dir: str,
                           timeout_s: float, incarnation: str = "", ps_start_by: float = 0.0) -> bool:
    """Write the supervisor's config (a running supervisor re-reads it), start it unless it runs, and wait until it
    has looked at EC2 once (its state file), failing with its log when it cannot (e.g. no credentials on the node).
    ``ps_start_by``: when a PS is about to be started, the time by which it will have been (the supervisor ends the
    cluster under ``down_when_done`` if none was: ``up`` was interrupted)."""
    await write_text(conn, f"{ROOT}/supervisor.json", supervisor_config(cfg, run_dir, incarnation, ps_start_by))
    running = await run(conn, f"{ALIVE}cd {HOME_ROOT} && alive \"$(cat supervisor.pid 2>/dev/null)\"", check=False)
    if running.exit_status == 0:
        return False
    await run(conn, f"rm -f {ROOT}/supervisor-state.json")
    await start_daemon(conn, "supervisor", supervisor_command())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        await check_alive(conn, "supervisor", grace_s=0.5)
        ready = await run(conn, f"[ -f {ROOT}/supervisor-state.json ]", check=False)
        if ready.exit_status == 0:
            return True
        if asyncio.get_running_loop().time() > deadline:
            raise RemoteError(f"the supervisor did not report within {timeout_s:.0f}s; see logs/supervisor.log")
