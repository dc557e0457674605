"""Limits that hold from boot: every instance carries its own watchdog in its user data.

``up`` launches every instance with ``InstanceInitiatedShutdownBehavior=terminate`` and a cloud-init ``bootcmd``
that starts a small shell watchdog at boot, before anything of shield is installed. It ends the instance (``shutdown
-h now``; EC2 then terminates it) when

* the **deadline** passes: the earlier of ``max_hours`` after the first launch of the cluster's current life and the
  moment ``max_cost`` would be spent at the plan's spot price, plus a grace (:data:`GRACE_S` and two supervisor
  intervals) so that the supervisor, which stops the PS cleanly and records why, normally acts first;
* the node has been **idle** for ``autostop.idle_minutes``: no PS process, and no agent process connected to its PS
  port (an agent whose PS is gone reconnects forever), counted from boot or from the last ``up`` that wrote the
  node's limits.

The limits are written at launch (``/var/lib/shield/limits``) and again by every ``up`` into ``~/shield/limits``
(which wins), so a later ``up`` with other limits moves them. Everything read back is parsed as numbers only.
"""
from __future__ import annotations

from dataclasses import dataclass

from shield_ops.config import ClusterConfig

#: seconds the instance-side deadline waits past a limit, on top of two supervisor intervals (the supervisor gives
#: the PS 60 s to stop, syncs the mirror, records why and terminates).
GRACE_S = 90
LIMITS_FILE = "limits"  # in ~/shield on the node

WATCHDOG = r"""#!/bin/sh
# shield-ops instance watchdog (started at boot from the user data): ends this instance at its deadline or after it
# idled too long, even when nothing else of shield runs. `shutdown` terminates it: InstanceInitiatedShutdownBehavior.
R="${SHIELD_ROOTFS:-}"
H="${SHIELD_NODE_HOME:-$(getent passwd @USER@ | cut -d: -f6)}"
echo $$ > "$R/var/lib/shield/watchdog.pid"
num() { sed -n "s/^$1=\([0-9][0-9]*\)\$/\1/p" "$2" 2>/dev/null | head -n 1; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
connected() {
  port=$(sed -n 's/.*:\([0-9][0-9]*\)$/\1/p' "$H/shield/agent.target" 2>/dev/null | head -n 1)
  [ -n "$port" ] || return 1
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ":$(printf '%04X' "$port") 01 "
}
busy() {
  alive "$(cat "$H/shield/ps.pid" 2>/dev/null)" && return 0
  alive "$(cat "$H/shield/agent.pid" 2>/dev/null)" && connected
}
idle_since=$(date +%s)
while :; do
  now=$(date +%s)
  f="$R/var/lib/shield/limits"; [ -s "$H/shield/limits" ] && f="$H/shield/limits"
  deadline=$(num deadline "$f"); idle=$(num idle_s "$f"); poll=$(num poll_s "$f")
  touched=$(stat -c %Y "$H/shield/limits" 2>/dev/null || echo 0)
  [ "$touched" -gt "$idle_since" ] && idle_since=$touched
  busy && idle_since=$now
  why=""
  [ "${deadline:-0}" -gt 0 ] && [ "$now" -ge "$deadline" ] && why=deadline
  [ -z "$why" ] && [ "${idle:-0}" -gt 0 ] && [ $((now - idle_since)) -ge "$idle" ] && why=idle
  if [ -n "$why" ]; then
    msg="shield-watchdog: $why at $now: shutting down (this instance terminates)"
    echo "$msg"; { echo "$msg" > /dev/console; } 2>/dev/null
    printf '{"reason": "%s", "time": %s}\n' "$why" "$now" > "$R/var/lib/shield/watchdog.json"
    if [ -x "$H/shield/venv/bin/python" ] && [ -f "$H/shield/supervisor.json" ]; then
      timeout 60 "$H/shield/venv/bin/python" -m shield_ops.supervisor --config "$H/shield/supervisor.json" \
        --record "$why" || true
    fi
    shutdown -h now || poweroff
    exit 0
  fi
  sleep "${poll:-15}"
done
"""

#: the cloud-init ``bootcmd`` (runs as root at every boot, early): write the watchdog and the launch's limits, then
#: start it as a transient systemd service (or, without systemd, as a detached process).
BOOTCMD = """R="${SHIELD_ROOTFS:-}"; mkdir -p "$R/var/lib/shield" "$R/var/log"
cat > "$R/var/lib/shield/watchdog.sh" <<'SHIELD_WATCHDOG'
@WATCHDOG@SHIELD_WATCHDOG
cat > "$R/var/lib/shield/limits" <<'SHIELD_LIMITS'
@LIMITS@SHIELD_LIMITS
if ! { command -v systemd-run >/dev/null 2>&1 && \
        systemd-run --unit=shield-watchdog --collect /bin/sh "$R/var/lib/shield/watchdog.sh"; }; then
  setsid nohup /bin/sh "$R/var/lib/shield/watchdog.sh" >> "$R/var/log/shield-watchdog.log" 2>&1 < /dev/null &
fi
"""


@dataclass(frozen=True)
class BootLimits:
    """What a node's watchdog enforces: ``deadline`` (UNIX seconds, 0 = none), ``idle_s`` (0 = never), and how often
    it looks (``poll_s``)."""

    deadline: int = 0
    idle_s: int = 0
    poll_s: int = 15

    def text(self) -> str:
        return f"deadline={self.deadline}\nidle_s={self.idle_s}\npoll_s={self.poll_s}\n"

    def describe(self) -> str:
        from shield_ops import fmt

        parts = [f"ends itself at {fmt.when(self.deadline)}" if self.deadline else "no deadline",
                 f"after {fmt.duration(self.idle_s)} idle" if self.idle_s else "no idle bound"]
        return ", ".join(parts)


def limits_for(cfg: ClusterConfig, now: float, life_start: float | None, spent_usd: float,
               usd_per_hour: float | None) -> BootLimits:
    """The watchdog limits of instances launched (or updated) now: ``life_start`` is the first launch of the current
    life (None: this launch starts it), ``spent_usd`` what the life has cost so far, ``usd_per_hour`` the estimated
    spot price of the whole cluster (None: unknown, then ``max_cost`` has no instance-side backstop)."""
    ends: list[float] = []
    if cfg.max_hours is not None:
        ends.append((life_start if life_start is not None else now) + cfg.max_hours * 3600)
    if cfg.max_cost is not None and usd_per_hour:
        ends.append(now + max(0.0, cfg.max_cost - spent_usd) / usd_per_hour * 3600)
    grace = GRACE_S + 2 * cfg.autostop_interval
    deadline = int(min(ends) + grace) if ends else 0
    return BootLimits(deadline, int(round(cfg.idle_minutes * 60)), int(min(30, max(2, round(cfg.autostop_interval)))))


def watchdog_script(user: str) -> str:
    return WATCHDOG.replace("@USER@", user)


def bootcmd(cfg: ClusterConfig, limits: BootLimits) -> str:
    return BOOTCMD.replace("@WATCHDOG@", watchdog_script(cfg.ssh_user)).replace("@LIMITS@", limits.text())


def cloud_config_bootcmd(cfg: ClusterConfig, limits: BootLimits) -> str:
    """The ``bootcmd:`` section of the cloud-config (one block-scalar entry)."""
    body = "".join(f"    {line}\n" if line else "\n" for line in bootcmd(cfg, limits).splitlines())
    return f"bootcmd:\n  - |\n{body}"
