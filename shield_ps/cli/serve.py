"""``shield-ps serve``: run a training job (optionally with ``--local-agents K`` on this machine).

The original ByzShield flag names are accepted as aliases (``--approach``, ``--mode``, ``--worker-fail``,
``--group-size``, ``--err-mode``, ``--lis-simulation``, ``--adversarial``) with their original values
(``draco_lite``, ``rev_grad``, ``hard_coded``, ...), so the paper's scripts translate directly.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from byzantine.aggregators import Aggregator
from byzantine.attacks import Attack
from byzantine.byzantine_sets import ByzantineChoice, DetoxAttack
from byzantine.placement import SCHEME_ALIASES, Scheme
from byzantine.vote import VoteMode
from shield_model.device import parse_device
from shield_ps.config import JOIN_TIMEOUT_LOCAL_S, JOIN_TIMEOUT_REMOTE_S, SCHEME_DEFAULTS, ServeConfig, valid_placements
from shield_ps.errors import CONFIG_ERRORS, ConfigError
from shield_ps.local_agents import default_processes, parse_agent_env
from shield_ps.phases.aggregate import ShortStep
from shield_ps.view import add_view_options
from wire.autocodec import AUTO, CODEC_CHOICES
from wire.cli import enum_choice, non_negative_int, positive_float, positive_int

if TYPE_CHECKING:
    from shield_ps.daemon import PSDaemon

DEFAULT_MAX_STEPS = 300
#: The line `serve` prints once it listens; scripts (bench/) read the port back with :func:`listening_port`.
LISTENING_LINE = "shield-ps: listening on {host}:{port}; run directory {train_dir}"
LISTENING_PATTERN = re.compile(r"shield-ps: listening on \S+:(\d+);")
_ATTACK_ALIASES = {"rev_grad": Attack.REV_GRAD, "reverse-gradient": Attack.REV_GRAD}
_CHOICE_ALIASES = {"hard_coded": ByzantineChoice.WORST, "hard-coded": ByzantineChoice.WORST}
_DETOX_ALIASES = {"whole_group": DetoxAttack.WHOLE_GROUP}


def _attack(text: str) -> str:
    if text == "none":
        return text
    try:
        return enum_choice(Attack, _ATTACK_ALIASES)(text).value
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("(choose from ", "(choose from none, ")) from None


_attack.__name__ = "attack"


class _LisSimulation(argparse.Action):
    """Original ``--lis-simulation simulate`` switches the attack to ALIE; any other value leaves it alone."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values == "simulate":
            namespace.attack = Attack.ALIE.value


class _Adversarial(argparse.Action):
    """Original ``--adversarial -100`` is the attack multiplier; ours is c with the sign built in (c = 100)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.attack_c = -float(values)


def _alie_z(text: str) -> str:
    if text == "auto":
        return text
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    return text


def _worker_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated worker ids like 0,4,9, got {text!r}") from None


def _port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 picks a free port), got {value}")
    return value


def _agg_threads(text: str) -> int:
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be in 1..64, got {value}")
    return value


def _synthetic_d(text: str) -> int:
    from shield_model.synthetic import MAX_SYNTHETIC_D

    value = positive_int(text)
    if value > MAX_SYNTHETIC_D:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_SYNTHETIC_D}, got {value}")
    return value


def _network(text: str) -> str:
    """argparse type of --network: a built-in name or MODULE:CALLABLE (imported and checked later, once)."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.names import network_choice

    try:
        network_choice(text)
    except ShieldModelError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--network ")) from None
    return text


def _dataset(text: str) -> str:
    """argparse type of --dataset: a built-in name or MODULE:CALLABLE."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.names import dataset_choice

    try:
        dataset_choice(text)
    except ShieldModelError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--dataset ")) from None
    return text


_network.__name__, _dataset.__name__ = "network", "dataset"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a training job as the parameter server",
                       description="Run a training job. --batch-size is the whole batch b; it is cut into f files "
                       "of b/f samples, and each worker computes l files, i.e. l*b/f samples per step.")
    g = p.add_argument_group("cluster")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for remote agents)")
    g.add_argument("--port", type=_port, default=7700, help="port (0 picks a free one and prints it)")
    g.add_argument("--local-agents", type=non_negative_int, default=0, metavar="K",
                   help="host K worker slots on this machine (in a few agent processes) and stop them at the end")
    g.add_argument("--agent-processes", type=positive_int, metavar="P",
                   help="agent processes for --local-agents (default: one per core but one for the PS, at least 1, "
                   "at most K)")
    g.add_argument("--token", help="cluster token (visible to other local users in the process list: prefer "
                   "--token-file)")
    g.add_argument("--token-file", help="file holding the cluster token (default: a fresh random token written to "
                   "RUN/token, readable by you only, and the join command printed)")
    g.add_argument("--local-agent-env", action="append", default=[], metavar="INDICES:NAME=VALUE",
                   help="extra environment for some local agent processes, e.g. 0,2:ATEN_CPU_CAPABILITY=avx2 "
                   "(repeatable; indices of --agent-processes; mixes determinism classes on one machine)")
    g.add_argument("--threads", type=positive_int, default=1, help="torch threads per agent (default 1)")
    g.add_argument("--agent-device", type=parse_device, default="cpu", metavar="DEVICE",
                   help="where the --local-agents compute: cpu (default), cuda, cuda:N or auto (their --device)")
    g = p.add_argument_group("placement")
    g.add_argument("--scheme", "--approach", type=enum_choice(Scheme, SCHEME_ALIASES), default=Scheme.MOLS)
    g.add_argument("--workers", type=positive_int, metavar="K",
                   help="number of workers K (default: the paper's for the scheme: 25 for rama_two, else 15)")
    g.add_argument("--replication", "--group-size", type=positive_int, metavar="R",
                   help="replication r (default: the paper's for the scheme: 5 for rama_two, 1 for baseline, else 3)")
    g.add_argument("--rama-m", type=positive_int, help="m of the Ramanujan Case 2 construction (default s)")
    g = p.add_argument_group("training")
    g.add_argument("--network", type=_network, default="LeNet",
                   help="model: LeNet (as in the paper's code), LeNet-relu, ResNet18, ResNet34, ResNet50, DenseNet, "
                   "VGG11, VGG13, or MODULE:CALLABLE for your own (CALLABLE(num_classes) returns a torch.nn.Module; "
                   "importable here and on every agent: docs/your-model.md)")
    g.add_argument("--dataset", type=_dataset, default="MNIST",
                   help="MNIST, Cifar10, Cifar100, SVHN, or MODULE:CALLABLE for your own (CALLABLE(data_dir) returns "
                   "map-style (train, test) datasets of (tensor, int) pairs: docs/your-model.md)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="directory that holds the dataset (default: the cache $SHIELD_DATA_DIR or "
                   "~/.cache/shield/data, downloaded there on first use; offline, MNIST's test split embedded in "
                   "the package); a plug-in dataset is given this directory, or the cache's")
    g.add_argument("--batch-size", type=positive_int, help="the whole batch b (default 10*f)")
    g.add_argument("--lr", type=positive_float, default=0.01)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--gamma", type=positive_float, default=1.0, help="lr decay factor every --lr-step steps")
    g.add_argument("--lr-step", type=positive_int, default=1000)
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--epochs", type=positive_int)
    steps.add_argument("--max-steps", type=positive_int, help=f"number of steps (default {DEFAULT_MAX_STEPS})")
    g.add_argument("--eval-freq", type=positive_int, default=50, help="evaluate and checkpoint every N steps")
    g.add_argument("--train-dir", help="where checkpoints and metrics.jsonl go (default runs/YYYYmmdd-HHMMSS)")
    g.add_argument("--seed", type=non_negative_int, default=0)
    g.add_argument("--synthetic-d", type=_synthetic_d, metavar="D",
                   help="benchmarks and tests only: train a flat vector of D parameters on synthetic gradients "
                   "(agents join with --synthetic SECONDS_PER_FILE; --network/--dataset are ignored, no evaluation)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint (of --train-dir; default: the newest run in runs/)")
    g.add_argument("--keep-checkpoints", type=positive_int, default=3, metavar="N",
                   help="keep the newest N checkpoints of the run (default 3)")
    g = p.add_argument_group("robustness")
    g.add_argument("--aggregator", "--mode", type=enum_choice(Aggregator), default=Aggregator.COORD_MEDIAN)
    g.add_argument("--buckets", type=positive_int, help="coord-median / sign-sgd: number of buckets")
    g.add_argument("--agg-s", type=non_negative_int, help="Byzantine count s of the aggregator (default c_max(q))")
    g.add_argument("--agg-m", type=positive_int, help="multi-krum: number of vectors averaged (default n-s)")
    g.add_argument("--agg-threads", type=_agg_threads, metavar="N",
                   help="threads of the aggregation (1..64; default: one per core; never changes the result)")
    g.add_argument("--byzantine", "--worker-fail", type=non_negative_int, default=0, metavar="Q")
    g.add_argument("--attack", "--err-mode", type=_attack, default="none",
                   help="none, " + ", ".join(a.value for a in Attack))
    g.add_argument("--lis-simulation", action=_LisSimulation, help=argparse.SUPPRESS)
    g.add_argument("--attack-c", type=float, default=100.0, help="attack constant c (default 100)")
    g.add_argument("--adversarial", action=_Adversarial, help=argparse.SUPPRESS)
    g.add_argument("--alie-z", type=_alie_z, default="1.0", help="ALIE z: a number (default 1.0, the original "
                   "code's), or auto: ALIE's z_max for the aggregator's f rows of which the corrupted files are "
                   "Byzantine")
    g.add_argument("--byzantine-gen", type=enum_choice(ByzantineChoice, _CHOICE_ALIASES),
                   default=ByzantineChoice.WORST)
    g.add_argument("--fixed-byzantine", type=_worker_list, default=(), help="worker ids for --byzantine-gen fixed")
    g.add_argument("--detox-attack", type=enum_choice(DetoxAttack, _DETOX_ALIASES), default=DetoxAttack.WORST)
    g.add_argument("--vote", type=enum_choice(VoteMode), default=VoteMode.AUTO,
                   help="auto (default): vote on digests, and where a file's digests disagree (agents of different "
                   "determinism classes) on sketches within --vote-tol; ingress about f*d. exact: digests only, "
                   "refused when the agents form more than one class. tolerant: fetch every replica and vote on "
                   "vectors within --vote-rtol (ingress f*r*d)")
    g.add_argument("--vote-rtol", type=positive_float, default=1e-5, help="relative tolerance of --vote tolerant")
    g.add_argument("--vote-tol", type=positive_float,
                   help="relative tolerance of --vote auto's sketch vote (default: 10x the spread of the agents' "
                   "probe gradients between classes, within [1e-6, 0.05])")
    g.add_argument("--short-step", type=enum_choice(ShortStep), default=ShortStep.SKIP,
                   help="when too few files survive for the aggregator's s: skip the update (default, always sound) "
                   "or lower-s (aggregate with the largest valid s; weaker)")
    g.add_argument("--max-skipped-steps", type=positive_int, default=20,
                   help="fail after this many consecutive steps that could not be aggregated (default 20)")
    g.add_argument("--cc-tau", type=positive_float, default=10.0, help="centered-clipping radius tau (default 10)")
    g.add_argument("--cc-iters", type=positive_int, default=1, help="centered-clipping iterations (default 1)")
    g = p.add_argument_group("transport and deadlines")
    g.add_argument("--codec", choices=CODEC_CHOICES, default=AUTO,
                   help="vector codec on every link; auto (default): per link and direction, the fastest of raw "
                   "and blosc2 LZ4/ZSTD for the link's measured rate (raw on fast links)")
    g.add_argument("--codec-level", type=non_negative_int, default=1)
    g.add_argument("--gather-timeout", type=positive_float, default=120.0, help="seconds to wait for digests")
    g.add_argument("--upload-timeout", "--latency-allowance", type=positive_float, default=10.0,
                   help="latency allowance of one transfer, seconds: a STEP send or a fetch must end within this "
                   "plus its size / --min-bandwidth (default 10)")
    g.add_argument("--min-bandwidth", type=positive_float, default=10.0, metavar="MB/s",
                   help="the slowest link a transfer is given time for (default 10 MB/s)")
    g.add_argument("--hedge-factor", type=positive_float, default=4.0,
                   help="ask the next holder of a file when a fetch runs this many times the median fetch time "
                   "(default 4)")
    g.add_argument("--hedge-floor", type=positive_float, default=0.25,
                   help="never hedge, nor end the gather's straggler grace, sooner (seconds, default 0.25)")
    g.add_argument("--streaming-vote", choices=("on", "off"), default="on",
                   help="on (default): fetch a file's winning payload as soon as r' equal digests are in, while "
                   "others still compute; off: after every digest is in (the serial step, for comparison)")
    g.add_argument("--relay", choices=("on", "off"), default="on",
                   help="relay broadcast (default on): the PS sends each step's parameters to --relay-roots agent "
                   "processes, which forward them in a tree, every hop checked by digest; off: to every agent")
    g.add_argument("--relay-roots", type=positive_int, default=2,
                   help="agent processes the PS sends the parameters to (default 2)")
    g.add_argument("--relay-fanout", type=positive_int, default=2,
                   help="agent processes each relay forwards them to (default 2)")
    g.add_argument("--relay-latency", type=positive_float, default=2.0,
                   help="seconds per hop of the relay tree, plus the vector's size / --min-bandwidth: an agent k hops "
                   "from the PS asks the PS directly after k such hops (default 2)")
    g.add_argument("--handshake-timeout", type=positive_float, default=5.0,
                   help="seconds an unauthenticated connection may take to authenticate (default 5)")
    g.add_argument("--max-preauth", type=positive_int, default=128,
                   help="unauthenticated connections held at once (default 128)")
    g.add_argument("--max-preauth-per-host", type=positive_int, default=32,
                   help="of those, from one source address (default 32)")
    g.add_argument("--join-timeout", type=positive_float, metavar="S",
                   help="seconds to wait for agents without progress; agents still loading extend the wait up to "
                   f"5*S (default {JOIN_TIMEOUT_REMOTE_S:.0f}, or {JOIN_TIMEOUT_LOCAL_S:.0f} with --local-agents)")
    add_view_options(p)


def listening_port(log_text: str) -> int | None:
    """The port in ``serve``'s :data:`LISTENING_LINE` within ``log_text`` (None until it is there)."""
    found = LISTENING_PATTERN.search(log_text)
    return int(found.group(1)) if found else None


RUNS_DIR = Path("runs")


def _train_dir(args: argparse.Namespace) -> str:
    """The run directory; a directory that already holds a run is reused only with --resume (nothing is lost).
    ``--resume`` without ``--train-dir`` picks the newest run under ``runs/``."""
    if args.train_dir is None:
        if args.resume:
            return _newest_run()
        return time.strftime("runs/%Y%m%d-%H%M%S")
    previous = Path(args.train_dir) / "metrics.jsonl"
    if previous.exists() and previous.stat().st_size and not args.resume:
        raise ConfigError(f"{args.train_dir} already holds a run: pass --resume to continue it, or choose another "
                          "--train-dir")
    return args.train_dir


def _newest_run() -> str:
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / "checkpoints").is_dir()), key=lambda p: p.name)
    if not runs:
        raise ConfigError(f"--resume without --train-dir resumes the newest run under {RUNS_DIR}/, and there is none "
                          "with checkpoints; pass --train-dir RUN")
    logging.getLogger(__name__).warning("--resume: resuming the newest run, %s", runs[-1])
    return str(runs[-1])


def _placement_args(args: argparse.Namespace) -> tuple[int, int]:
    """--workers and --replication, each defaulting to the paper's configuration of the scheme."""
    default_k, default_r = SCHEME_DEFAULTS[args.scheme.value]
    return args.workers or default_k, args.replication or default_r


def check_placement(scheme: str, workers: int, replication: int, rama_m: int | None) -> None:
    """Fail with a message naming valid ``--workers``/``--replication`` pairs when the placement cannot be built."""
    from byzantine.placement import build_placement

    try:
        build_placement(scheme, workers, replication, rama_m)
    except CONFIG_ERRORS as exc:
        valid = "; ".join(f"--workers {k} --replication {r}" for k, r in valid_placements(scheme))
        raise type(exc)(f"{exc} (valid for {scheme}, e.g.: {valid})") from None


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    max_steps = args.max_steps if args.max_steps or args.epochs else DEFAULT_MAX_STEPS
    if args.fixed_byzantine and args.byzantine_gen is not ByzantineChoice.FIXED:
        raise ConfigError("--fixed-byzantine needs --byzantine-gen fixed")
    if not 0 <= args.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.agent_device != "cpu" and not args.local_agents:
        raise ConfigError("--agent-device applies to --local-agents K; agents joined by hand take their own --device")
    if args.agent_processes and not args.local_agents:
        raise ConfigError("--agent-processes applies to --local-agents K; agents joined by hand choose their own "
                          "--workers N")
    workers, replication = _placement_args(args)
    check_placement(args.scheme.value, workers, replication, args.rama_m)
    join_timeout = args.join_timeout or (JOIN_TIMEOUT_LOCAL_S if args.local_agents else JOIN_TIMEOUT_REMOTE_S)
    try:
        parse_agent_env(args.local_agent_env, args.agent_processes or default_processes(max(1, args.local_agents)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ServeConfig(
        scheme=args.scheme.value, workers=workers, replication=replication, rama_m=args.rama_m,
        network=args.network, dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, gamma=args.gamma, lr_step=args.lr_step, epochs=args.epochs,
        max_steps=max_steps if not args.epochs else None, eval_freq=args.eval_freq, train_dir=_train_dir(args),
        aggregator=args.aggregator.value, buckets=args.buckets, agg_s=args.agg_s, agg_m=args.agg_m,
        byzantine=args.byzantine, attack=args.attack, attack_c=args.attack_c, alie_z=args.alie_z,
        byzantine_gen=args.byzantine_gen.value, fixed_byzantine=tuple(args.fixed_byzantine),
        detox_attack=args.detox_attack.value, seed=args.seed, vote=args.vote.value, vote_rtol=args.vote_rtol,
        vote_tol=args.vote_tol, codec=args.codec, codec_level=args.codec_level, threads=args.threads,
        agg_threads=args.agg_threads, synthetic_d=args.synthetic_d, host=args.host, port=args.port,
        resume=args.resume, local_agents=args.local_agents, local_agent_env=tuple(args.local_agent_env),
        local_agent_device=args.agent_device,
        view="plain" if args.plain else "quiet" if args.quiet else "auto",
        gather_timeout=args.gather_timeout, upload_timeout=args.upload_timeout, join_timeout=join_timeout,
        checkpoint_keep=args.keep_checkpoints, agent_processes=args.agent_processes,
        min_bandwidth=args.min_bandwidth, hedge_factor=args.hedge_factor, hedge_floor=args.hedge_floor,
        streaming_vote=args.streaming_vote == "on", relay=args.relay, relay_roots=args.relay_roots,
        relay_fanout=args.relay_fanout, relay_latency=args.relay_latency,
        handshake_timeout=args.handshake_timeout, max_preauth=args.max_preauth,
        max_preauth_per_host=args.max_preauth_per_host, short_step=args.short_step.value,
        max_skipped_steps=args.max_skipped_steps, cc_tau=args.cc_tau, cc_iters=args.cc_iters,
    )


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """The cluster token and whether it must be written to RUN/token (it was generated or given on the command
    line: local agents and the printed join command need a file)."""
    from shield_ps.daemon import new_token
    from wire.auth import read_token

    if args.token is not None:
        print("shield-ps serve: warning: --token is visible to other local users (in the process list); prefer "
              "--token-file", file=sys.stderr)
    token = read_token(args.token, args.token_file)
    return (token, args.token_file is None) if token is not None else (new_token(), True)


def join_command(host: str, port: int, token_file: Path, config: ServeConfig, workers: int = 1) -> str:
    """The complete command that joins ``workers`` slots to this PS, runnable as printed on this machine: the
    token file, the slots, and the data directory the PS reads (or ``--synthetic 0`` for a synthetic job)."""
    import shlex
    import socket

    from shield_ps.plugins import agent_args as plugin_args

    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    parts = ["shield-agent", "join", f"{shown}:{port}", "--token-file", str(token_file)]
    if workers != 1:
        parts += ["--workers", str(workers)]
    if config.synthetic_d is not None:
        parts += ["--synthetic", "0"]
    elif config.data_dir is not None:
        parts += ["--data-dir", config.data_dir]
    return shlex.join(parts + plugin_args(config))


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (what ``mkdir -p`` would create), or None."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _leaves_nothing(train_dir: Path) -> bool:
    """True when a run directory holds nothing a run made (only the token and an empty metrics.jsonl)."""
    for path in train_dir.iterdir():
        if path.name == "token" or (path.name == "metrics.jsonl" and path.stat().st_size == 0):
            continue
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from shield_ps.daemon import PSDaemon
    from shield_ps.data import locate_data
    from shield_ps.events import EventSink
    from shield_ps.job import resolve_job
    from shield_ps.local_agents import write_token_file
    from shield_ps.plugins import resolve_plugins
    from shield_ps.view import view_from_args
    from wire import install_event_loop

    config = config_from_args(args)
    resolve_job(config)  # validation: a refused run leaves nothing behind
    data_line = None
    if config.synthetic_d is None:  # before any directory or agent: a bad --data-dir creates nothing
        where = locate_data(config.dataset, config.data_dir, download=True)
        config = resolve_plugins(config, str(where.path)).replace(data_dir=where.hand_on)  # a bad plug-in neither
        data_line = f"shield-ps: data {where.describe()}"
    token, write_token = _token(args)
    train_dir = Path(config.train_dir)
    created = _first_missing(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)
    token_file = write_token_file(train_dir / "token", token) if write_token else Path(args.token_file)
    view = view_from_args(args)
    root = logging.getLogger()
    handler = view.log_handler(root.level or logging.WARNING)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    sink = EventSink(train_dir / "metrics.jsonl")
    sink.subscribe(view.publish)

    def listening(host: str, port: int) -> None:
        view.post_line(LISTENING_LINE.format(host=host, port=port, train_dir=train_dir))
        if data_line is not None:
            view.post_line(data_line)
        if config.local_agents < config.workers:
            missing = config.workers - config.local_agents
            command = join_command(host, port, token_file, config, missing)
            view.post_line(f"waiting for {missing} agent slot(s); join with: {command}")
            if missing > 1:
                view.post_line(f"(--workers N hosts N slots in one agent process; several processes, here or on "
                               f"other machines, may share the {missing} slots)")

    install_event_loop()
    daemon = PSDaemon(config, token, sink, on_listening=listening, token_file=token_file)
    view.start()
    try:
        return asyncio.run(_serve(daemon))
    except CONFIG_ERRORS:
        sink.close()
        if created is not None and _leaves_nothing(train_dir):
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        view.close()
        sink.close()
        if train_dir.exists():
            print(f"shield-ps: run directory {train_dir}", file=sys.stderr)


async def _serve(daemon: PSDaemon) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await daemon.run()
    except asyncio.CancelledError:
        print("shield-ps: interrupted; checkpoints so far are kept", file=sys.stderr)
        return 130
