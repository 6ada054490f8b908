#!/usr/bin/env bash
# Installs what sandq needs on a Debian 12 host, reusing what is already
# there at the pinned version. Idempotent; run as root.
#   redis-server, debootstrap, iproute2, docker-compose  Debian packages
#                              (docker-compose only validates compose.yaml)
#   chromium                   Debian package; headless, for the dashboard test
#   python3, python3-venv, python3-pip, python3-setuptools, python3-wheel
#                              Debian packages; the Python client's tests run
#                              with /usr/bin/python3 and pip-install it into a
#                              venv without a package index
#   runsc                      gVisor, built statically from the Go module proxy
#                              (Debian's 2022 runsc is too old for current kernels)
#   minio                      MinIO server, from the Go module proxy
#   mc                         MinIO client, from the Go module proxy; only the
#                              test of compose.yaml's s3-users script runs it
#   weed                       SeaweedFS, the second S3 server the tests run
#                              sandq against; built from the Go module proxy in
#                              tools/seaweedfs (its go.mod pins the version)
#   helm                       Helm, from the Go module proxy; only the test of
#                              the chart in deploy/helm runs it (lint, template)
set -euo pipefail

RUNSC_VERSION=v0.0.0-20260905035102-160fafc42237
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
HELM_VERSION=v4.3.2
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${SANDQ_BIN_DIR:-/usr/local/bin}

export PATH=/usr/local/go/bin:$BIN_DIR:$PATH

log() { printf '[install-deps] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
	log "must run as root"
	exit 1
fi
command -v go >/dev/null || { log "Go is required (expected at /usr/local/go)"; exit 1; }
# SeaweedFS's own go.mod has a replace directive, so `go install pkg@version`
# refuses it: tools/seaweedfs is a module of its own that pins it (and
# repeats the replace), built here with its go.sum checked.
SEAWEEDFS_VERSION=$(cd "$REPO_DIR/tools/seaweedfs" && go list -m -f '{{.Version}}' github.com/seaweedfs/seaweedfs)

# Debian packages. A policy-rc.d keeps the redis-server package from starting
# its own service on 6379 (sandq dev and the tests start Redis themselves).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
command -v docker-compose >/dev/null || missing+=(docker-compose) # only to validate compose.yaml
command -v chromium >/dev/null || missing+=(chromium)             # headless, for the dashboard test (e2e)
# Debian's Python, not whatever python3 is first on the PATH: the Python
# client's tests (test/e2e/python_test.go) run /usr/bin/python3, and build
# the package with Debian's setuptools and wheel (no package index).
for pkg in python3 python3-venv python3-pip python3-setuptools python3-wheel; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]} from Debian"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# module_version BIN MODULE prints the version of MODULE that BIN was built
# from (its main module, or a dependency for what tools/ builds), if any.
module_version() {
	[ -x "$1" ] || return 0
	go version -m "$1" 2>/dev/null | awk -v m="$2" '($1 == "mod" || $1 == "dep") && $2 == m { print $3 }'
}

if [ "$(module_version "$BIN_DIR/runsc" gvisor.dev/gvisor)" != "$RUNSC_VERSION" ]; then
	log "building runsc $RUNSC_VERSION (static, about 2 minutes)"
	CGO_ENABLED=0 GOBIN=$BIN_DIR go install "gvisor.dev/gvisor/runsc@$RUNSC_VERSION"
fi
if [ "$(module_version "$BIN_DIR/minio" github.com/minio/minio)" != "$MINIO_VERSION" ]; then
	log "building minio $MINIO_VERSION (about 6 minutes on 2 cores)"
	GOBIN=$BIN_DIR go install "github.com/minio/minio@$MINIO_VERSION"
fi
if [ "$(module_version "$BIN_DIR/mc" github.com/minio/mc)" != "$MC_VERSION" ]; then
	log "building mc $MC_VERSION (about 3 minutes on 2 cores)"
	GOBIN=$BIN_DIR go install "github.com/minio/mc@$MC_VERSION"
fi
if [ "$(module_version "$BIN_DIR/helm" helm.sh/helm/v4)" != "$HELM_VERSION" ]; then
	log "building helm $HELM_VERSION (about 4 minutes on 2 cores)"
	GOBIN=$BIN_DIR go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
fi
if [ "$(module_version "$BIN_DIR/weed" github.com/seaweedfs/seaweedfs)" != "$SEAWEEDFS_VERSION" ]; then
	log "building weed (SeaweedFS) $SEAWEEDFS_VERSION (about 6 minutes on 2 cores)"
	(cd "$REPO_DIR/tools/seaweedfs" && go build -o "$BIN_DIR/weed" github.com/seaweedfs/seaweedfs/weed)
fi
log "ready: $(redis-server --version | cut -d' ' -f3), runsc $RUNSC_VERSION, minio $MINIO_VERSION, mc $MC_VERSION, helm $HELM_VERSION, weed $SEAWEEDFS_VERSION, $(debootstrap --version)"
