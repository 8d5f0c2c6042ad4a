#!/usr/bin/env bash
# Make sure the Debian packages piblade needs are present.
#   ensure-packages.sh base   what `make demo` needs: python3-venv, redis-server, postgresql (the server
#                             binaries only: Debian's default cluster on port 5432 is not created), and
#                             npm (it fetches plotly.js for `piblade report` once, at a pinned version and hash)
#   ensure-packages.sh test   what `make test` needs on top: the servers and browser the tests start,
#                             and the tools of the nspawn testbed (tests/e2e, `piblade testbed`)
# As root, missing packages are installed with apt-get; otherwise we print the command and fail.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# package -> how to tell it is there
check() {
  case "$1" in
    python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
    redis-server) have redis-server ;;
    npm)          have npm ;;  # fetches the pinned plotly.js that `piblade report` inlines (scripts/plotly-bundle.sh)
    redis-tools)  have redis-benchmark ;;
    postgresql)   ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ;;  # the local cluster's run history
    chromium)     have chromium ;;  # the dashboard's browser test (Playwright drives Debian's build)
    systemd-container) have systemd-nspawn ;;  # the testbed boots its nodes with systemd-nspawn
    debootstrap)  have debootstrap ;;  # builds the testbed's node image (once, cached)
    openssh-client) have ssh && have ssh-keygen ;;  # the controller's side of the testbed's SSH
    iproute2)     have ip ;;  # the testbed's bridge
    qemu-user-static) [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] && [ -x /usr/bin/qemu-aarch64-static ] ;;  # arm64 testbed nodes
    openssh-server) [ -x /usr/sbin/sshd ] ;;  # a real sshd on loopback for the SSH tests
    samba)        [ -x /usr/sbin/smbd ] && have pdbedit ;;  # a real smbd on loopback for the NAS tests
    samba-vfs-modules) ls /usr/lib/*/samba/vfs/streams_xattr.so >/dev/null 2>&1 ;;  # streams and Apple metadata
    smbclient)    have smbclient ;;  # Samba's own client: the baseline of bench/nas.py
    *) return 1 ;;
  esac
}

case "${1:-}" in
  base) wanted=(python3-venv redis-server postgresql npm) ;;
  test) wanted=(python3-venv redis-server postgresql npm redis-tools chromium systemd-container debootstrap qemu-user-static openssh-client iproute2 openssh-server samba samba-vfs-modules smbclient) ;;
  *) echo "usage: $0 base|test" >&2; exit 2 ;;
esac

missing=()
for package in "${wanted[@]}"; do
  check "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "piblade needs these Debian packages: ${missing[*]}" >&2
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    echo "first keep Debian from creating its own PostgreSQL cluster on port 5432:" >&2
    echo "  echo 'create_main_cluster = false' | sudo tee -a /etc/postgresql-common/createcluster.conf" >&2
  fi
  echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if [[ " ${missing[*]} " == *" postgresql "* ]]; then
  # piblade runs its own PostgreSQL in its state directory: no system-wide cluster on 5432.
  mkdir -p /etc/postgresql-common
  grep -qsx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf ||
    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
echo "installing Debian packages: ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
