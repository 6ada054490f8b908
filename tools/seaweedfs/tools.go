//go:build tools

// Package tools records the SeaweedFS command that scripts/install-deps.sh
// builds (`go build -o $BIN_DIR/weed github.com/seaweedfs/seaweedfs/weed` in
// this module). The build tag keeps it out of every ordinary build.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
