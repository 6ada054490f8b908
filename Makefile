# sandq — the two commands a fresh Debian 12 machine needs:
#   make demo   install what is missing, build the analysis image, start the
#               local stack on it, run the spreadsheet example
#   make test   install what is missing, build both images, run every test
#   make check  the fast tier: gofmt and `go test -short ./...`, as any user,
#               with no root, runsc or images, in under a minute
#   make chaos  the fault-injection suites at full size (make test runs a subset)
SHELL := /bin/bash
export PATH := /usr/local/go/bin:/usr/local/bin:$(PATH)

SANDQ      := bin/sandq
IMAGE_DIR  ?= /var/lib/sandq/images
# -p 1: packages run one after another; the firewall tests change host-wide
# nftables state that the end-to-end jobs rely on.
GO_TEST_FLAGS ?= -count=1 -p 1 -timeout 40m

.PHONY: deps build image image-analysis images check test chaos demo vet clean

deps:
	scripts/install-deps.sh

build:
	go build -o $(SANDQ) ./cmd/sandq

# The images, each rebuilt only when its package list, overlay or the host's
# extra CAs change (otherwise `image build` returns at once).
# default: Python 3 with matplotlib, Node.js.
image: deps build
	$(SANDQ) image build default --packages-file images/default.packages --preload-file images/default.preload --image-dir $(IMAGE_DIR)

# analysis: default's plus pandas, scipy, openpyxl, Pillow, graphviz, sqlite3,
# fonts and command-line tools; what examples/ runs on.
image-analysis: deps build
	$(SANDQ) image build analysis --packages-file images/analysis.packages --overlay images/analysis.overlay --preload-file images/analysis.preload --image-dir $(IMAGE_DIR)

images: image image-analysis

vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...

# The fast tier: tests that need root, runsc, network namespaces or the
# images skip under -short (and only then). go test runs go vet's main
# checks itself; the whole of go vet is in make vet (and make test).
check:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go test -short -count=1 ./...

test: deps images vet
	SANDQ_IMAGE_DIR=$(IMAGE_DIR) go test $(GO_TEST_FLAGS) -v ./... 2>&1 | tee /tmp/sandq-test.log | grep -E '^(\s*--- |PASS|FAIL|ok |panic|.*\.go:[0-9]+)' ; exit $${PIPESTATUS[0]}

# The fault-injection suites at full size: test/chaos/ as `make test` runs
# it (300 jobs across two Redis restarts, 10 GiB to stdout, ...), but with
# 100 000 output files meeting a 10 000-file cap instead of 1000; and the
# multi-host simulation (test/multihost/) with 300 jobs over three hosts
# instead of about 50. The tables of scenarios and figures are printed at
# the end and kept in /tmp/sandq-chaos.txt and /tmp/sandq-multihost.txt,
# the verbose log in /tmp/sandq-chaos.log.
chaos: deps image vet
	SANDQ_IMAGE_DIR=$(IMAGE_DIR) SANDQ_CHAOS_FULL=1 go test -count=1 -p 1 -v -timeout 60m ./test/chaos/ ./test/multihost/ 2>&1 | tee /tmp/sandq-chaos.log | grep -E '^(\s*--- |PASS|FAIL|ok |panic|.*\.go:[0-9]+)' ; status=$${PIPESTATUS[0]}; cat /tmp/sandq-chaos.txt /tmp/sandq-multihost.txt 2>/dev/null; exit $$status

demo: deps image-analysis
	scripts/demo.sh

clean:
	rm -rf bin
