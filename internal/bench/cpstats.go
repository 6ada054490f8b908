package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTicks is the kernel's USER_HZ, the unit of CPU times in
// /proc/PID/stat (100 on every Linux architecture sandq runs on).
const clockTicks = 100

// redisStats is one reading of a Redis server's INFO: calls and time per
// command, traffic, CPU and memory.
type redisStats struct {
	calls map[string]int64
	usec  map[string]int64
	// netIn, netOut: total_net_input_bytes, total_net_output_bytes.
	netIn, netOut int64
	// cpu is used_cpu_sys + used_cpu_user, in seconds.
	cpu float64
	// memory is used_memory, in bytes.
	memory int64
	at     time.Time
}

// readRedisStats reads INFO commandstats, stats, cpu and memory. The INFO
// call itself is left out of the calls.
func readRedisStats(ctx context.Context, rdb *redis.Client) (redisStats, error) {
	s := redisStats{calls: map[string]int64{}, usec: map[string]int64{}, at: time.Now()}
	info, err := rdb.Info(ctx, "commandstats", "stats", "cpu", "memory").Result()
	if err != nil {
		return s, fmt.Errorf("redis INFO: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		if name, ok := strings.CutPrefix(k, "cmdstat_"); ok {
			if name == "info" {
				continue
			}
			for _, f := range strings.Split(v, ",") {
				fk, fv, _ := strings.Cut(f, "=")
				n, _ := strconv.ParseInt(fv, 10, 64)
				switch fk {
				case "calls":
					s.calls[name] = n
				case "usec":
					s.usec[name] = n
				}
			}
			continue
		}
		switch k {
		case "total_net_input_bytes":
			s.netIn, _ = strconv.ParseInt(v, 10, 64)
		case "total_net_output_bytes":
			s.netOut, _ = strconv.ParseInt(v, 10, 64)
		case "used_cpu_sys", "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			s.cpu += f
		case "used_memory":
			s.memory, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if len(s.calls) == 0 {
		return s, fmt.Errorf("redis INFO commandstats listed no command")
	}
	return s, nil
}

// totalCalls sums the calls of every command (those run inside scripts
// included, as Redis counts them).
func (s redisStats) totalCalls() int64 {
	var n int64
	for _, c := range s.calls {
		n += c
	}
	return n
}

// since is s less an earlier reading: calls per command over the interval.
func (s redisStats) since(before redisStats) redisStats {
	d := redisStats{calls: map[string]int64{}, usec: map[string]int64{}, at: s.at,
		netIn: s.netIn - before.netIn, netOut: s.netOut - before.netOut, cpu: s.cpu - before.cpu, memory: s.memory - before.memory}
	for name, n := range s.calls {
		if c := n - before.calls[name]; c > 0 {
			d.calls[name] = c
			d.usec[name] = s.usec[name] - before.usec[name]
		}
	}
	return d
}

// s3Counter counts the S3 requests of the stores whose transport it wraps:
// by method, with the body bytes sent and received.
type s3Counter struct {
	mu       sync.Mutex
	byMethod map[string]int64
	errors   int64
	sent     atomic.Int64
	received atomic.Int64
}

func newS3Counter() *s3Counter { return &s3Counter{byMethod: map[string]int64{}} }

// wrap is a storage.Config.WrapTransport.
func (c *s3Counter) wrap(next http.RoundTripper) http.RoundTripper {
	return countingTransport{next: next, c: c}
}

// s3Counts is a reading of an s3Counter.
type s3Counts struct {
	byMethod       map[string]int64
	errors         int64
	sent, received int64
	requests       int64
}

func (c *s3Counter) read() s3Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := s3Counts{byMethod: map[string]int64{}, errors: c.errors, sent: c.sent.Load(), received: c.received.Load()}
	for m, n := range c.byMethod {
		r.byMethod[m] = n
		r.requests += n
	}
	return r
}

// since is r less an earlier reading.
func (r s3Counts) since(before s3Counts) s3Counts {
	d := s3Counts{byMethod: map[string]int64{}, errors: r.errors - before.errors, sent: r.sent - before.sent, received: r.received - before.received}
	for m, n := range r.byMethod {
		if c := n - before.byMethod[m]; c > 0 {
			d.byMethod[m] = c
			d.requests += c
		}
	}
	return d
}

type countingTransport struct {
	next http.RoundTripper
	c    *s3Counter
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.c.mu.Lock()
	t.c.byMethod[req.Method]++
	t.c.mu.Unlock()
	if req.ContentLength > 0 {
		t.c.sent.Add(req.ContentLength)
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.StatusCode >= 400 {
		t.c.mu.Lock()
		t.c.errors++
		t.c.mu.Unlock()
	}
	if err != nil {
		return resp, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &t.c.received}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// processCPU is the CPU time (user + system) of process pid so far, from
// /proc/PID/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of process %d: %w", pid, err)
	}
	// The command name may hold spaces: fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu of process %d: unreadable stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// utime and stime are fields 14 and 15 of stat; f[0] is field 3.
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu of process %d: short stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu of process %d: unreadable stat", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// selfCPU is this process's CPU time (user + system) so far.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
