package webhook

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// netnsEnv names the test a child process runs in its own network namespace.
const netnsEnv = "SANDQ_WEBHOOK_TEST_NETNS"

// inNetns runs the calling (top-level) test again in a child process, in a
// network namespace of its own (unshare --net; a user namespace too when
// not root) with loopback up and holding addrs (CIDR) as well, so the test
// can give "this host" addresses that are neither loopback nor private
// without touching the machine's own network. It returns true in
// the child, where the test goes on; in the parent it waits for the child,
// fails the test if the child failed, and returns false.
func inNetns(t *testing.T, addrs ...string) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == t.Name() {
		run := func(args ...string) {
			t.Helper()
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		run("link", "set", "lo", "up")
		for _, a := range addrs {
			run("addr", "add", a, "dev", "lo")
		}
		return true
	}
	args := []string{"--net"}
	if os.Geteuid() != 0 {
		args = []string{"--user", "--map-root-user", "--net"}
	}
	args = append(args, os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), netnsEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in a network namespace of its own:\n%s", out)
	if err != nil {
		t.Fatalf("%s failed in its network namespace: %v", t.Name(), err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s did not run in its network namespace", t.Name())
	}
	return false
}
