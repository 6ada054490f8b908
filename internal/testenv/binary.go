package testenv

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildSandq builds the sandq binary (cmd/sandq, from the source under
// test) into dir and returns its path.
func BuildSandq(dir string) (string, error) {
	bin := filepath.Join(dir, "sandq")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sandq/sandq/cmd/sandq").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build sandq: %w\n%s", err, out)
	}
	return bin, nil
}

// Sandq is BuildSandq into the test's temporary directory.
func Sandq(t testing.TB) string {
	t.Helper()
	bin, err := BuildSandq(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
