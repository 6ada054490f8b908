package testenv

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"testing"
)

// RunSuite runs a test binary's tests around a set-up they all share, for
// a TestMain (which has no *testing.T):
//
//	func TestMain(m *testing.M) { os.Exit(testenv.RunSuite(m, "e2e", what, setup)) }
//
// Under -short the suite is skipped whole: it prints that it is, naming
// what (what the suite needs), and returns 0 without calling setup. With
// -test.list the tests are listed and nothing is set up. Otherwise a
// set-up that fails (it unwinds what it made itself) fails the run loudly;
// after the tests, teardown runs (told whether they failed), and its error
// fails a run that passed.
func RunSuite(m *testing.M, name, what string, setup func(ctx context.Context) (teardown func(failed bool) error, err error)) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	if testing.Short() {
		fmt.Fprintf(os.Stderr, "%s: the whole suite is skipped under -short (it needs %s)\n", name, what)
		return 0
	}
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	teardown, err := setup(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s set-up failed: %v\n(`make test` installs and builds what this suite needs: `make deps`, `make images`, as root)\n", name, err)
		return 1
	}
	code := m.Run()
	if err := teardown(code != 0); err != nil {
		fmt.Fprintf(os.Stderr, "%s teardown: %v\n", name, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Logger is the suites' logger: warnings and errors on stderr, everything
// when SANDQ_TEST_LOG is set.
func Logger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("SANDQ_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
