"""Every ``PIBLADE_*`` environment variable, declared once: name, default, who reads it, and why.

The inventory's ``piblade_*`` settings have their table in
:data:`piblade.inventory.SETTINGS`; this is the same for the environment. The
code reads each variable through :meth:`EnvVar.get` (or names it by
``EnvVar.name``), ``docs/settings.md`` is rendered from both tables by
``python -m piblade.settingsdoc``, and tests check that every ``PIBLADE_*`` name
in the code is declared here and that the document is current. This module
imports nothing of piblade: everything may import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable piblade reads. ``default`` is as documented ("" when unset means off)."""

    name: str
    default: str
    help: str
    #: Which command or process reads it.
    read_by: str

    def get(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable's value, or None when it is unset or empty."""
        value = (os.environ if environ is None else environ).get(self.name)
        return value or None


def _var(name: str, default: str, read_by: str, help: str) -> EnvVar:
    return EnvVar(name, default, help, read_by)


# -- which cluster, and where state lives --------------------------------------------
STATE_DIR = _var("PIBLADE_STATE_DIR", "$XDG_STATE_HOME/piblade, else ~/.local/state/piblade", "every command",
                 "Where piblade keeps its state: the local cluster, each inventory cluster's secrets, logs.")
INVENTORY = _var("PIBLADE_INVENTORY", "", "every command with -i",
                 "The inventory to use when -i is not given; unset, commands mean the local cluster.")
REDIS_URL = _var("PIBLADE_REDIS_URL", "", "every command, worker, agent",
                 "redis://[user@]host:port/db of the cluster's Redis, without the password; wins over the inventory.")
REDIS_PASSWORD_FILE = _var("PIBLADE_REDIS_PASSWORD_FILE", "", "worker, agent, every command with PIBLADE_REDIS_URL",
                           "A 0600 file holding the Redis password that goes with PIBLADE_REDIS_URL.")
RESULTS_URL = _var("PIBLADE_RESULTS_URL", "", "recorder, runs, dashboard",
                  "postgresql://user@host:port/db of the results database, without the password; wins over the "
                  "inventory and the local cluster.")
RESULTS_PASSWORD_FILE = _var("PIBLADE_RESULTS_PASSWORD_FILE", "", "recorder, runs, dashboard with PIBLADE_RESULTS_URL",
                             "A 0600 file holding the results database password that goes with PIBLADE_RESULTS_URL.")
DEBUG = _var("PIBLADE_DEBUG", "", "every command",
             "Set, an unexpected error's traceback also goes to the terminal (it always goes to crash.log).")
# -- jobs and workers ------------------------------------------------------------------
JOB_MODULES = _var("PIBLADE_JOB_MODULES", "", "every command, worker",
                   "Comma-separated modules to import jobs from, besides the jobs/ package.")
NODE = _var("PIBLADE_NODE", "this host's name", "worker, agent", "The node name workers and the agent report under.")
DATA_DIR = _var("PIBLADE_DATA_DIR", "", "worker", "Where the worker finds the share (its mount, or the local data dir).")
RECORDS_BOUND = _var("PIBLADE_RECORDS_BOUND", "1000000", "submit",
                     "How many run records may wait in Redis for the results database before new runs are refused "
                     "(none is dropped; the default holds over 24 h of the demo's pace).")
RECORD_TASKS = _var("PIBLADE_RECORD_TASKS", "1", "worker",
                    "0 sends no task attempt records to the run history (bench/recorder.py measures their cost).")
HARD_TIMEOUT_GRACE = _var("PIBLADE_HARD_TIMEOUT_GRACE", "30", "worker",
                          "Seconds past a task's timeout before its stuck process is killed and replaced.")
BATCH_SECONDS = _var("PIBLADE_BATCH_SECONDS", "0.05", "worker",
                     "How much work (by the run's measured time per task, at most 32 tasks) a worker takes off the "
                     "queue in one round trip; 0 takes one task at a time.")
# -- the health agent ---------------------------------------------------------------------
ROLE = _var("PIBLADE_ROLE", "", "agent", "Roles the agent reports, e.g. controller,workers.")
HEALTH_INTERVAL = _var("PIBLADE_HEALTH_INTERVAL", "5", "agent, local up", "Seconds between heartbeats.")
HEALTH_HISTORY = _var("PIBLADE_HEALTH_HISTORY", "24 h of heartbeats", "agent",
                      "How many history entries the agent keeps (tests use a few).")
MAX_TEMP = _var("PIBLADE_MAX_TEMP", "80", "agent", "The temperature (°C) at which the node pauses its workers.")
MOUNT = _var("PIBLADE_MOUNT", "", "agent", "Where the share is mounted; its space is reported.")
THERMAL_FILE = _var("PIBLADE_THERMAL_FILE", "/sys/class/thermal/thermal_zone0/temp", "agent",
                    "A millidegree file read instead of psutil's sensors (tests, odd boards).")
MODEL_FILE = _var("PIBLADE_MODEL_FILE", "/proc/device-tree/model", "agent", "Where the board's model is read.")
VCGENCMD = _var("PIBLADE_VCGENCMD", "vcgencmd on PATH", "agent",
                "The vcgencmd executable for throttling flags; empty: never run it.")
FAN_FILE = _var("PIBLADE_FAN_FILE", "", "agent", "A file holding the fan's rpm, read instead of psutil's fans.")
# -- the alert service ------------------------------------------------------------------------
ALERT_INTERVAL = _var("PIBLADE_ALERT_INTERVAL", "5", "alertd, local up",
                      "Seconds between two checks of the alert service; its lead lasts three checks (at least 3 s).")
# -- the NAS share -------------------------------------------------------------------------
SMB_SERVER = _var("PIBLADE_SMB_SERVER", "the inventory's nas node", "nas, submit --over", "SMB server HOST[:PORT].")
SMB_SHARE = _var("PIBLADE_SMB_SHARE", "piblade", "nas, submit --over", "The share's name.")
SMB_USER = _var("PIBLADE_SMB_USER", "piblade", "nas, submit --over", "The Samba account.")
SMB_PASSWORD_FILE = _var("PIBLADE_SMB_PASSWORD_FILE", "the cluster's provisioned secret", "nas, submit --over",
                         "A 0600 file holding the Samba password.")
SMB_PASSWORD = _var("PIBLADE_SMB_PASSWORD", "", "nas, submit --over",
                    "The Samba password itself (prefer PIBLADE_SMB_PASSWORD_FILE: environments leak).")
SMB_LEAN_READ = _var("PIBLADE_SMB_LEAN_READ", "1", "nas",
                     "0 reads through smbprotocol's own message framing instead of piblade's pipelined reads "
                     "(and moves small files one at a time).")
SMB_LEAN_WRITE = _var("PIBLADE_SMB_LEAN_WRITE", "1", "nas",
                      "0 writes through smbprotocol's own message framing instead of piblade's lean writes "
                      "(and moves small files one at a time, not many per compound request).")
# -- the dashboard's tunnel -----------------------------------------------------------------
TUNNEL_TIMEOUT = _var("PIBLADE_TUNNEL_TIMEOUT", "10", "dashboard --tunnel", "Seconds to wait for ngrok before serving LAN only.")
NGROK_DOMAIN = _var("PIBLADE_NGROK_DOMAIN", "", "dashboard --tunnel", "A reserved ngrok domain to use.")
NGROK_SERVER_ADDR = _var("PIBLADE_NGROK_SERVER_ADDR", "ngrok's", "dashboard --tunnel", "ngrok's server address (tests).")
NGROK_BASIC_AUTH_FILE = _var("PIBLADE_NGROK_BASIC_AUTH_FILE", "", "dashboard --tunnel",
                             "A 0600 file of user:password lines ngrok asks for before the dashboard's own login.")
NGROK_OAUTH = _var("PIBLADE_NGROK_OAUTH", "", "dashboard --tunnel", "An OAuth provider ngrok puts in front (e.g. google).")
NGROK_ALLOW_EMAILS = _var("PIBLADE_NGROK_ALLOW_EMAILS", "", "dashboard --tunnel", "Comma-separated e-mails OAuth lets in.")
NGROK_ALLOW_DOMAINS = _var("PIBLADE_NGROK_ALLOW_DOMAINS", "", "dashboard --tunnel",
                           "Comma-separated e-mail domains OAuth lets in.")
NGROK_ALLOW_CIDR = _var("PIBLADE_NGROK_ALLOW_CIDR", "", "dashboard --tunnel",
                        "Comma-separated address ranges ngrok lets in.")
# -- set by piblade for its own child processes ---------------------------------------------
CGROUPS = _var("PIBLADE_CGROUPS", "", "testbed (internal)",
               "cgroup.procs files a testbed node's nspawn moves itself into before it starts; set by piblade.")

ENV: tuple[EnvVar, ...] = tuple(v for v in globals().values() if isinstance(v, EnvVar))


def declared(name: str) -> EnvVar:
    return next(v for v in ENV if v.name == name)
