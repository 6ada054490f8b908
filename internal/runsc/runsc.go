// Package runsc runs gVisor's runsc the way sandq's sandboxes do — its
// global flags, a clean environment, the boot log that tells how a
// container's application exited — and removes what containers leave on
// the host: the containers under a runsc root, mounts below a directory,
// cgroups. The executor's sandboxes and the bench's bare runner
// (internal/barerunsc) both build on it, so that the two make their
// containers the same way.
package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Flags are runsc's global flags for one sandbox, the same on every call
// about it: its runsc root, the platform, its network (none, or the
// sandbox's own namespace), the size-capped overlay that takes every write
// to its root filesystem, and extra.
func Flags(root, platform, overlayDir string, disk int64, networked bool, extra []string) []string {
	network := "--network=none"
	if networked {
		network = "--network=sandbox"
	}
	f := []string{
		"--root=" + root,
		"--platform=" + platform,
		network,
		fmt.Sprintf("--overlay2=root:dir=%s,size=%d", overlayDir, disk),
	}
	return append(f, extra...)
}

// Command is a runsc command whose whole environment is a PATH: runsc
// gets nothing of the worker's own.
func Command(ctx context.Context, bin string, flags []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, append(append([]string(nil), flags...), args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// Output runs a runsc command and returns its standard output; a
// failure names the subcommand and carries what runsc wrote to stderr.
func Output(cmd *exec.Cmd, subcommand string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", subcommand, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// IsNotExist reports whether a runsc command failed because the container
// (or its root) does not exist.
func IsNotExist(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "does not exist") || strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "not found")
}

// List lists the IDs of the containers under a runsc root; bin is the
// runsc binary.
func List(ctx context.Context, bin, root string) ([]string, error) {
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--root="+root, "list", "--format=json").Output()
	if err != nil {
		return nil, fmt.Errorf("runsc list %s: %w", root, err)
	}
	var list []struct {
		ID string `json:"id"`
	}
	if s := strings.TrimSpace(string(out)); s != "" && s != "null" {
		if err := json.Unmarshal(out, &list); err != nil {
			return nil, fmt.Errorf("runsc list: %q: %w", out, err)
		}
	}
	ids := make([]string, 0, len(list))
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return ids, nil
}

// CleanDir deletes every container under dir's runsc root (dir/runsc),
// unmounts everything mounted below dir, removes the cgroup cgroupDir (and
// those below it) and, when all that worked, the directory.
func CleanDir(ctx context.Context, bin, dir, cgroupDir string) error {
	var errs []error
	root := filepath.Join(dir, "runsc")
	ids, err := List(ctx, bin, root)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		out, err := exec.CommandContext(cctx, bin, "--root="+root, "delete", "--force", id).CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("delete container %s: %w: %s", id, err, strings.TrimSpace(string(out))))
		}
	}
	mounts, err := MountsUnder(dir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range mounts {
		if err := Unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	if err := RemoveCgroups(cgroupDir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
