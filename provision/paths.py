"""Where things live on the target host, and the rules that name them. Pure.

Every path, unit name and listen address that provision writes, starts or checks is spelled
here once: the renderer, the change engine and verify read the same facts, so a change to where
Ollama's installer puts its binary touches this file alone. Paths are absolute as on the target;
`--root` is applied by provision.change.host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

# --- systemd ---------------------------------------------------------------------------------

SYSTEMD_DIR = "/etc/systemd/system"
# Where systemd looks for system units (systemd.unit(5)); Debian's /lib is not merged everywhere.
UNIT_DIRS = (
    SYSTEMD_DIR,
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
SYSTEMD_RUNNING = "/run/systemd/system"  # what sd_booted() checks
# Unit states as `systemctl is-enabled` and `show` spell them.
ENABLED_STATES = frozenset({"enabled", "enabled-runtime", "static", "alias", "generated"})
ENABLED_BY_US = frozenset({"enabled", "enabled-runtime"})  # what `disable` would undo
RUNNING_STATES = frozenset({"active", "activating", "reloading"})

# --- the units and files provision writes ----------------------------------------------------

OLLAMA_UNIT = "ollama.service"
OLLAMA_DROPIN = f"{SYSTEMD_DIR}/ollama.service.d/50-provision.conf"
OLLAMA_TEMPLATE_UNIT = f"{SYSTEMD_DIR}/ollama@.service"
INSTANCE_ENV_DIR = "/etc/provision/ollama"  # one <n>.env per ollama@<n>.service
NGINX_UNIT = "nginx.service"
NGINX_SITE = "/etc/nginx/conf.d/provision-ollama.conf"
UPSTREAM_HEADER = "X-Provision-Upstream"  # the site's header naming the replica that answered
POWER_UNIT = "gpu-power-limits.service"
# amdgpu forgets a power cap on suspend/resume: this oneshot sets the caps again after one.
POWER_RESUME_UNIT = "gpu-power-limits-resume.service"
# Writes an AMD card's cap to the hwmon below its PCI device directory, found when it runs.
AMDGPU_POWER_SCRIPT = "/usr/local/libexec/provision/amdgpu-power-cap"
SLEEP_TARGETS = (
    "suspend.target",
    "hibernate.target",
    "hybrid-sleep.target",
    "suspend-then-hibernate.target",
)
MODELFILE_DIR = "/etc/provision/modelfiles"

# --- the runtimes' own files -----------------------------------------------------------------

OLLAMA_BIN = "/usr/local/bin/ollama"  # where Ollama's install.sh puts it
OLLAMA_MODELS_DIR = "/usr/share/ollama/.ollama/models"  # the service user's store
LLAMA_SERVER_BIN = "/usr/local/bin/llama-server"
NVIDIA_SMI = "/usr/bin/nvidia-smi"
# One query, two readers: apply's plan compares limits, verify checks them after a reboot.
NVIDIA_SMI_POWER_QUERY = ("--query-gpu=uuid,power.limit", "--format=csv,noheader,nounits")

# --- provision's own state -------------------------------------------------------------------

MANIFEST_PATH = "/var/lib/provision/manifest.json"
BACKUPS_DIR = "/var/lib/provision/backups"
# Retention (provision.change.history): a backup goes when it is neither among the newest
# KEEP_BACKUPS nor younger than KEEP_BACKUP_DAYS.
KEEP_BACKUPS = 10
KEEP_BACKUP_DAYS = 30
LOCK_PATH = "/run/lock/provision.lock"


def unsafe_target(target: str) -> str | None:
    """Why ``target`` is not a path provision may touch on a host, or None.

    Every path provision reads or writes is absolute and normal: no '.' or '..' component, no
    doubled or trailing slash, no NUL. Paths read back from recorded state (a manifest, a
    backup index) are checked against this before use, so that an edited or corrupt record
    cannot reach outside the root (`/../../etc/x` under --root /srv/img is /etc/x).
    """
    if not target.startswith("/"):
        return "not an absolute path"
    if "\0" in target:
        return "contains a NUL byte"
    parts = target.split("/")[1:]
    if target != "/" and any(part in ("", ".", "..") for part in parts):
        return "not a normal path (an empty, '.' or '..' component)"
    return None


def slug(name: str) -> str:
    """A file-name-safe form of a model or unit name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def modelfile_path(model_name: str) -> str:
    return f"{MODELFILE_DIR}/{slug(model_name)}.Modelfile"


LLAMA_SERVER_UNIT_PREFIX = "llama-server-"


def llama_server_unit(model_name: str) -> str:
    return f"{LLAMA_SERVER_UNIT_PREFIX}{slug(model_name.replace(':', '-'))}.service"


def stock_ollama_beside(units: Iterable[str]) -> bool:
    """llama-server units are planned and the stock ollama.service is not: if that one runs, it
    may load models on the same GPUs, in memory the plan counted for llama-server."""
    names = list(units)
    return OLLAMA_UNIT not in names and any(n.startswith(LLAMA_SERVER_UNIT_PREFIX) for n in names)


def replica_unit(n: int) -> str:
    return f"ollama@{n}.service"


def replica_env_file(n: int) -> str:
    return f"{INSTANCE_ENV_DIR}/{n}.env"


# --- unit-name rules (systemd.unit(5)) --------------------------------------------------------


def template_of(unit: str) -> str:
    """ollama@0.service -> ollama@.service; a unit that is no instance is its own template."""
    if "@" not in unit:
        return unit
    return unit.split("@", 1)[0] + "@." + unit.rsplit(".", 1)[-1]


def instances_of(unit: str, names: Iterable[str]) -> list[str]:
    """A template (ollama@.service) stands for each of its instances in `names`."""
    if "@." not in unit:
        return [unit]
    return [n for n in names if template_of(n) == unit]


def unit_of_path(path: str) -> str | None:
    """/etc/systemd/system/ollama.service.d/x.conf -> ollama.service (its unit or drop-in)."""
    if not path.startswith(SYSTEMD_DIR + "/"):
        return None
    rest = path[len(SYSTEMD_DIR) + 1 :]
    head = rest.split("/", 1)[0]
    if "/" in rest:
        return head[:-2] if head.endswith(".d") else None
    return head


def unit_file(unit: str) -> str:
    return f"{SYSTEMD_DIR}/{unit}"


# --- listen addresses ------------------------------------------------------------------------

WILDCARDS = frozenset({"*", "0.0.0.0", "::", ""})
# A client on the host itself reaches a wildcard listener on loopback of the same family.
_LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}


def host_port(pair: Sequence[object]) -> str:
    """`(address, port)` -> `address:port`, with an IPv6 address in brackets."""
    address, port = str(pair[0]), int(str(pair[1]))
    try:
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
    except ValueError:
        pass  # a host name
    return f"{address}:{port}"


def reachable(listen: tuple[str, int]) -> tuple[str, int]:
    """Where to connect to a service listening on `listen` (a wildcard: through loopback)."""
    host, port = listen
    return _LOOPBACK_FOR.get(host, host), port


def http_url(host: str, port: int) -> str:
    """The URL a client on the host itself uses for a service listening on host:port."""
    return f"http://{host_port(reachable((host, port)))}"
