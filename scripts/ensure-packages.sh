#!/usr/bin/env bash
# Make sure the Debian packages piblade needs are present.
#   ensure-packages.sh redis-server   what `make demo` needs
#   ensure-packages.sh test           what `make test` needs on top (servers the tests start)
# As root, missing packages are installed with apt-get; otherwise we print the command and fail.
set -euo pipefail

declare -A provides=(
  [redis-server]="redis-server:redis-server"
)
case "${1:-}" in
  redis-server) wanted=(redis-server) ;;
  test)         wanted=(redis-server) ;;
  *) echo "usage: $0 redis-server|test" >&2; exit 2 ;;
esac

missing=()
for entry in "${wanted[@]}"; do
  spec=${provides[$entry]}
  binary=${spec%%:*}; package=${spec#*:}
  command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "piblade needs these Debian packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
