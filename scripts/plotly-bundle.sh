#!/usr/bin/env bash
# Put plotly.js (the "basic" partial bundle: scatter, bar and pie, ~1.2 MB) where `piblade report`
# inlines it from: piblade/report/vendor/plotly-basic.min.js. Not committed: fetched once, by name,
# with npm, at a pinned version whose tarball must match the pinned SHA-512 (npm's integrity
# string), so every machine inlines the same bytes. Harmless to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.1.1
INTEGRITY=sha512-1oNF8PeQx2hv/y7tqEVWKD3JGwn/MGEMQ8mL9HUwsaqG9FGy/OU5FHUHvzqbqxN4mnwZGI9abTiE775C4kkjMQ==
PACKAGE=plotly.js-basic-dist-min
OUT=piblade/report/vendor/plotly-basic.min.js
STAMP=piblade/report/vendor/plotly-basic.version

if [ -f "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PACKAGE@$VERSION $INTEGRITY" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is needed once to fetch plotly.js for \`piblade report\`" >&2
  echo "install it with:  sudo apt-get install -y npm   (or run: bash scripts/ensure-packages.sh base)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $PACKAGE@$VERSION for piblade report ..."
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tarball="$work/$PACKAGE-$VERSION.tgz"
actual=$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
if [ "$actual" != "$INTEGRITY" ]; then
  echo "$PACKAGE@$VERSION: the tarball's SHA-512 is not the pinned one; refusing it" >&2
  echo "  expected $INTEGRITY" >&2
  echo "  got      $actual" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/plotly-basic.min.js package/LICENSE
mkdir -p "$(dirname "$OUT")"
cp "$work/package/LICENSE" piblade/report/vendor/plotly-LICENSE
cp "$work/package/plotly-basic.min.js" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$PACKAGE@$VERSION $INTEGRITY" > "$STAMP"
