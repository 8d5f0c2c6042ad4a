"""Node facts: one shell script gathers them all in one round trip; a pure parser reads them."""

from __future__ import annotations

from dataclasses import dataclass

#: Every fact in one script, with as few processes as it can: it runs on every node in every
#: run, and on a cluster of small Pis (or 20 nodes sharing two cores) each fork and each
#: interpreter start is CPU time. One ``python3 -S`` (no site import) gives both versions.
FACTS_SCRIPT = r"""
set -- $(uname -m -r)
echo "arch=$2"
echo "kernel=$1"
model=$(tr -d '\0' 2>/dev/null < /proc/device-tree/model)
[ -n "$model" ] || read -r model 2>/dev/null < /sys/class/dmi/id/product_name
[ -n "$model" ] || read -r model 2>/dev/null < /sys/devices/virtual/dmi/id/sys_vendor
echo "model=${model:-unknown}"
while read -r key value _; do [ "$key" = MemTotal: ] && echo "mem_kb=$value" && break; done < /proc/meminfo
( . /etc/os-release 2>/dev/null; echo "os=${PRETTY_NAME:-unknown}" )
py=$(python3 -S -c 'import sys; print("%d.%d %s" % (sys.version_info[0], sys.version_info[1], sys.version.split()[0]))' 2>/dev/null)
echo "python=${py% *}"
echo "python_full=${py#* }"
echo "bits=$(getconf LONG_BIT 2>/dev/null)"
if grep -qw cifs /proc/filesystems 2>/dev/null; then echo cifs=yes
elif modprobe -n cifs 2>/dev/null; then echo cifs=module
else echo cifs=no; fi
[ -e /dev/fuse ] && echo fuse=yes || echo fuse=no
init=; read -r init 2>/dev/null < /proc/1/comm
echo "init=$init"
echo "virt=$(systemd-detect-virt 2>/dev/null || echo none)"
echo "user=$(id -un)"
postgres=
for dir in /usr/lib/postgresql/[0-9]*; do
  version=${dir##*/}
  case $version in *[!0-9]*) continue ;; esac
  [ -z "$postgres" ] || [ "$version" -gt "$postgres" ] && postgres=$version
done
echo "postgres=$postgres"
"""


#: The PostgreSQL major version each Debian (and Raspberry Pi OS) release ships.
POSTGRES_OF_RELEASE = {"bullseye": "13", "bookworm": "15", "trixie": "17"}


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What provisioning needs to know about a node before it plans."""

    arch: str
    kernel: str
    model: str
    mem_mib: int
    os: str
    python: str
    cifs: bool
    fuse: bool
    systemd: bool
    user: str
    virtualization: str = "none"
    #: ``getconf LONG_BIT``: 32 on a 32-bit OS even where the kernel (uname) says aarch64.
    userland_bits: int = 0
    #: Major version of the newest PostgreSQL server installed ("" for none).
    postgres: str = ""
    #: ``3.11.2``: the lock's markers for the node are decided on it (:mod:`piblade.provision.sitetree`).
    python_full: str = ""

    @property
    def wheel_platform(self) -> str:
        """The manylinux platform tag of the node's architecture."""
        return {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}.get(
            self.arch, self.arch
        )

    @property
    def postgres_version(self) -> str:
        """The PostgreSQL major version to configure: the newest installed, else what the release's
        ``postgresql`` package installs (a Pi may get it in the same run that configures it)."""
        if self.postgres:
            return self.postgres
        release = self.os.rsplit("(", 1)[-1].rstrip(")").strip().lower()
        return POSTGRES_OF_RELEASE.get(release, POSTGRES_OF_RELEASE["bookworm"])

    def summary(self) -> str:
        board = self.model
        if board == "unknown":  # no device tree or DMI name: say what it runs in, if anything
            board = f"{self.virtualization} guest" if self.virtualization != "none" else "unknown board"
        return f"{board}, {self.arch}, {self.mem_mib} MiB, {self.os}"


def parse_facts(output: str) -> NodeFacts:
    """Parse the output of :data:`FACTS_SCRIPT` (key=value lines; unknown keys ignored)."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    mem_kb = values.get("mem_kb", "")
    return NodeFacts(
        arch=values.get("arch", "unknown"),
        kernel=values.get("kernel", ""),
        model=values.get("model", "unknown") or "unknown",
        mem_mib=int(mem_kb) // 1024 if mem_kb.isdigit() else 0,
        os=values.get("os", "unknown"),
        python=values.get("python", ""),
        cifs=values.get("cifs") in ("yes", "module"),
        fuse=values.get("fuse") == "yes",
        systemd=values.get("init") == "systemd",
        user=values.get("user", ""),
        virtualization=values.get("virt", "none") or "none",
        userland_bits=int(values["bits"]) if values.get("bits", "").isdigit() else 0,
        postgres=values.get("postgres", ""),
        python_full=values.get("python_full", ""),
    )
