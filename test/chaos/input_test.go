package chaos

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs"
)

// TestBadInputAtEnqueue submits what a producer must not get through: bad
// file names, too many or too large files, unknown runtimes, environment
// names that are not valid or that override the sandbox's own variables,
// limits over the maxima, malformed webhook URLs. Each is refused with an
// error naming the field, and nothing is left in the store or in Redis.
// (e2e's TestRefusedSubmissionsLeaveNothing and TestRefusedCapsAtEnqueue,
// and the API tests, cover the same rules through their own paths.)
func TestBadInputAtEnqueue(t *testing.T) {
	sc := newScenario(t, 7, "bad input at enqueue")
	const q = "chaos-input"
	// A worker publishes the queue's webhook policy (a secret, private
	// URLs allowed); it must never get a job.
	w := sc.worker("input", workerOpts{queues: q, concurrency: 1})
	cfg := jobsConfig(q)
	cfg.MaxInputs, cfg.MaxInputBytes, cfg.MaxInputsTotal, cfg.MaxScriptBytes = 3, 64<<10, 100<<10, 16<<10
	c, err := jobs.NewClient(cfg, env.store, env.logger)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ok := script("ok.py", "print(1)\n")
	in := func(name string) jobs.File { return script(name, "x") }
	big := func(name string, n int) jobs.File { return script(name, strings.Repeat("x", n)) }
	with := func(f func(*jobs.Submission)) jobs.Submission {
		s := jobs.Submission{Script: ok}
		f(&s)
		return s
	}
	inputs := func(names ...string) jobs.Submission {
		return with(func(s *jobs.Submission) {
			for _, n := range names {
				s.Inputs = append(s.Inputs, in(n))
			}
		})
	}
	env1 := func(k, v string) jobs.Submission {
		return with(func(s *jobs.Submission) { s.Env = map[string]string{k: v} })
	}
	limits := func(l jobs.LimitRequest) jobs.Submission {
		return with(func(s *jobs.Submission) { s.Limits = l })
	}
	hook := func(u string) jobs.Submission {
		return with(func(s *jobs.Submission) { s.Webhook = u })
	}
	cases := []struct {
		name  string
		sub   jobs.Submission
		field string
	}{
		{"input name with NUL", inputs("a\x00b.csv"), "inputs"},
		{"input name with a newline", inputs("a\nb.csv"), "inputs"},
		{"input name with a backslash", inputs(`dir\b.csv`), "inputs"},
		{"input name of 4 KB", inputs(strings.Repeat("n", 4096)), "inputs"},
		{"input name with a 300-byte component", inputs("d/" + strings.Repeat("c", 300)), "inputs"},
		{"input name with ..", inputs("../up.csv"), "inputs"},
		{"absolute input name", inputs("/etc/passwd"), "inputs"},
		{"empty input name", inputs(""), "inputs"},
		{"duplicate input names", inputs("x.csv", "x.csv"), "inputs"},
		{"input names differing in case", inputs("Data.csv", "data.csv"), "inputs"},
		{"input name both file and directory", inputs("a", "a/b"), "inputs"},
		{"too many inputs", inputs("1", "2", "3", "4"), "inputs"},
		{"input over the size cap", with(func(s *jobs.Submission) { s.Inputs = []jobs.File{big("big.bin", 64<<10+1)} }), "inputs"},
		{"inputs over the total cap", with(func(s *jobs.Submission) { s.Inputs = []jobs.File{big("a.bin", 60<<10), big("b.bin", 60<<10)} }), "inputs"},
		{"script name with a newline", jobs.Submission{Script: script("job\n.py", "1")}, "script"},
		{"script over its cap", jobs.Submission{Script: big("big.py", 16<<10+1)}, "script"},
		{"unknown runtime", with(func(s *jobs.Submission) { s.Runtime = "cobol" }), "runtime"},
		{"script extension with no runtime", jobs.Submission{Script: script("job.exe", "1")}, "runtime"},
		{"env name starting with a digit", env1("1BAD", "x"), "env"},
		{"env name with a dash", env1("A-B", "x"), "env"},
		{"env name with =", env1("A=B", "x"), "env"},
		{"empty env name", env1("", "x"), "env"},
		{"env value with NUL", env1("OK", "a\x00b"), "env"},
		{"env overriding INPUT_DIR", env1("INPUT_DIR", "/"), "env"},
		{"env overriding OUTPUT_DIR", env1("OUTPUT_DIR", "/etc"), "env"},
		{"env overriding output_dir", env1("output_dir", "/etc"), "env"},
		{"env overriding HTTP_PROXY", env1("HTTP_PROXY", "http://evil:1"), "env"},
		{"env overriding https_proxy", env1("https_proxy", "http://evil:1"), "env"},
		{"env overriding NO_PROXY", env1("NO_PROXY", "*"), "env"},
		{"env overriding ALL_PROXY", env1("ALL_PROXY", "socks5://evil:1"), "env"},
		{"argument with NUL", with(func(s *jobs.Submission) { s.Args = []string{"a\x00b"} }), "args"},
		{"memory over the maximum", limits(jobs.LimitRequest{MemoryBytes: 64 << 30}), "memory"},
		{"memory under the minimum", limits(jobs.LimitRequest{MemoryBytes: 1 << 20}), "memory"},
		{"timeout over the maximum", limits(jobs.LimitRequest{TimeoutSeconds: 86400}), "timeout"},
		{"disk over the maximum", limits(jobs.LimitRequest{DiskBytes: 1 << 40}), "disk"},
		{"output size over the maximum", limits(jobs.LimitRequest{OutputBytes: 1 << 40}), "output_size"},
		{"output files over the maximum", limits(jobs.LimitRequest{OutputFiles: 1 << 20}), "output_files"},
		{"webhook with ftp scheme", hook("ftp://127.0.0.1/hook"), "webhook"},
		{"webhook with user info", hook("http://user:pw@127.0.0.1/hook"), "webhook"},
		{"webhook that is not a URL", hook("not a url"), "webhook"},
		{"webhook without host", hook("http:///hook"), "webhook"},
		{"webhook with a space in the host", hook("http://exa mple.com/hook"), "webhook"},
		{"webhook of 3 KB", hook("http://127.0.0.1/" + strings.Repeat("p", 3000)), "webhook"},
		{"queue name not valid", with(func(s *jobs.Submission) { s.Queue = "bad queue!" }), "queue"},
		{"the webhook delivery queue", with(func(s *jobs.Submission) { s.Queue = "webhooks" }), "queue"},
		{"idempotency key with NUL", with(func(s *jobs.Submission) { s.IdempotencyKey = "k\x00" }), "idempotency_key"},
	}
	objects0, keys0 := snapshot(t)
	refused := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			enq, err := c.Enqueue(ctx, tc.sub)
			var fe *jobs.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Errorf("got %+v, %v; want a refusal naming %q", enq, err, tc.field)
				return
			}
			refused++
		})
	}
	objects1, keys1 := snapshot(t)
	newObjects := diff(objects0, objects1)
	newKeys := diff(keys0, keys1)
	if len(newObjects) > 0 {
		t.Errorf("refused submissions left objects: %v", newObjects)
	}
	if len(newKeys) > 0 {
		t.Errorf("refused submissions left task keys in Redis: %v", newKeys)
	}
	if w.alive() && strings.Contains(w.log(), "task started") {
		t.Errorf("the worker got a job")
	}
	sc.figure("%d of %d bad submissions refused naming their field (inputs: NUL, newline, backslash, 4 KB, long component, .., absolute, empty, duplicate, case, file/dir, count, size, total; script; runtime; env names, NUL, INPUT_DIR/OUTPUT_DIR/proxy overrides; args; limits; webhook URLs; queue; idempotency key)", refused, len(cases))
	sc.figure("left behind: %d objects in the store, %d task keys in Redis", len(newObjects), len(newKeys))
	sc.finish(time.Minute)
}

// snapshot lists every object in the store and asynq's task keys in Redis.
func snapshot(t *testing.T) (objects, taskKeys []string) {
	t.Helper()
	objects, err := env.store.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	defer rdb.Close()
	all, err := rdb.Keys(context.Background(), "asynq:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range all {
		if strings.Contains(k, ":t:") {
			taskKeys = append(taskKeys, k)
		}
	}
	sort.Strings(objects)
	sort.Strings(taskKeys)
	return objects, taskKeys
}

func diff(before, after []string) []string {
	seen := map[string]bool{}
	for _, x := range before {
		seen[x] = true
	}
	var out []string
	for _, x := range after {
		if !seen[x] {
			out = append(out, x)
		}
	}
	return out
}
