#!/bin/bash
# Example networked job: installs an npm package through the egress proxy,
# then tries a host that is not in its allowlist.
#   sandq enqueue examples/npm_install.sh --network npm --wait
# The result's "egress" section lists the registry as allowed and
# example.org as refused (403 from the proxy).
set -e
cd /work
npm install --no-audit --no-fund is-number
node -e 'console.log("is-number(42):", require("is-number")(42))'
python3 - <<'PY'
import urllib.request, urllib.error
try:
    urllib.request.urlopen("https://example.org", timeout=10)
    print("example.org: reached (unexpected)")
except Exception as e:
    print("example.org: refused:", e)
PY
