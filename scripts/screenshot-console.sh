#!/usr/bin/env bash
# Takes a screenshot of a Prometheus console page with headless Chromium (Debian's
# chromium-headless-shell), after its graphs have been drawn.
#   scripts/screenshot-console.sh [URL] [FILE]
# URL defaults to the console of `make observe` (http://127.0.0.1:$OBSERVE_PORT/consoles/
# testdata-api.html, OBSERVE_PORT default 9090) with its graphs over the last RANGE seconds
# (default 900); FILE to docs/img/console.png. WINDOW_SIZE (default 1500,1250) is the page's
# size in pixels.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# The graphs' time range is in the URL's fragment, as the console's time controls set it.
range_hash="#pctc%7B%22duration%22%3A${RANGE:-900}%2C%22endTime%22%3A0%7D"
url=${1:-http://127.0.0.1:${OBSERVE_PORT:-9090}/consoles/testdata-api.html$range_hash}
out=${2:-$here/docs/img/console.png}
chromium=${CHROMIUM_BIN:-$(command -v chromium-headless-shell || command -v chromium || echo /usr/lib/chromium/chromium-headless-shell)}
[ -x "$chromium" ] || { echo "screenshot-console: chromium-headless-shell is missing (apt-get install chromium-headless-shell)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
profile=$(mktemp -d /tmp/tdapi-chromium-XXXXXX)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: Chromium's sandbox refuses to run as root; the page is our own, on loopback.
# --virtual-time-budget: lets the page's scripts fetch and draw the graphs before the shot.
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --window-size="${WINDOW_SIZE:-1500,1250}" \
  --virtual-time-budget=10000 --screenshot="$out" "$url" >/dev/null 2>&1
[ -s "$out" ] || { echo "screenshot-console: no screenshot was written to $out" >&2; exit 1; }
echo "screenshot-console: $url -> $out" >&2
