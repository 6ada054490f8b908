# sandq — the two commands a fresh Debian 12 machine needs:
#   make demo   install what is missing, start the local stack, run the example job
#   make test   install what is missing, build the test image, run every test
SHELL := /bin/bash
export PATH := /usr/local/go/bin:/usr/local/bin:$(PATH)

SANDQ      := bin/sandq
IMAGE_DIR  ?= /var/lib/sandq/images
# -p 1: packages run one after another; the firewall tests change host-wide
# nftables state that the end-to-end jobs rely on.
GO_TEST_FLAGS ?= -count=1 -p 1 -timeout 40m

.PHONY: deps build image test demo vet clean

deps:
	scripts/install-deps.sh

build:
	go build -o $(SANDQ) ./cmd/sandq

# The default image (Python 3 with matplotlib, Node.js); rebuilt only when its
# package list or the host's extra CAs change.
image: deps build
	$(SANDQ) image build default --packages-file images/default.packages --image-dir $(IMAGE_DIR)

vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...

test: deps image vet
	SANDQ_IMAGE_DIR=$(IMAGE_DIR) go test $(GO_TEST_FLAGS) -v ./... 2>&1 | tee /tmp/sandq-test.log | grep -E '^(\s*--- |PASS|FAIL|ok |panic|.*\.go:[0-9]+)' ; exit $${PIPESTATUS[0]}

demo: deps image
	scripts/demo.sh

clean:
	rm -rf bin
