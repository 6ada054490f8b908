package jobs

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/sandq/sandq/internal/bytesize"
)

// MemoryBudget is how much of the host's memory a worker's sandboxes may
// hold at once, counted as the sum of their jobs' memory limits: a
// Fraction of the host's memory (MemTotal), or a number of Bytes. One of
// the two is set; the zero value is DefaultMemoryBudget.
type MemoryBudget struct {
	Fraction float64
	Bytes    int64
}

// DefaultMemoryBudget leaves a quarter of the host's memory to the worker
// itself, runsc's own processes and everything else on the host.
var DefaultMemoryBudget = MemoryBudget{Fraction: 0.75}

// ParseMemoryBudget reads a budget: a fraction of the host's memory
// ("0.75"), a percentage ("75%"), or a size ("8GiB", see ParseSize).
func ParseMemoryBudget(s string) (MemoryBudget, error) {
	t := strings.TrimSpace(s)
	bad := func() (MemoryBudget, error) {
		return MemoryBudget{}, fmt.Errorf("memory budget %q: want a fraction of the host's memory (0.75), a percentage (75%%) or a size (8GiB)", s)
	}
	if p, ok := strings.CutSuffix(t, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return bad()
		}
		if f <= 0 {
			return bad()
		}
		return MemoryBudget{Fraction: f / 100}, nil
	}
	if f, err := strconv.ParseFloat(t, 64); err == nil && f > 0 && f <= 1 {
		return MemoryBudget{Fraction: f}, nil
	}
	n, err := ParseSize(t)
	if err != nil || n == 0 {
		return bad()
	}
	return MemoryBudget{Bytes: n}, nil
}

func (b MemoryBudget) String() string {
	if b.Bytes > 0 {
		return FormatSize(b.Bytes)
	}
	return strconv.FormatFloat(b.Fraction, 'f', -1, 64)
}

func (b MemoryBudget) validate() error {
	switch {
	case b.Fraction != 0 && b.Bytes != 0:
		return errors.New("worker memory budget: set a fraction of the host's memory or a size, not both")
	case b.Bytes == 0 && (math.IsNaN(b.Fraction) || b.Fraction <= 0 || b.Fraction > 1):
		return fmt.Errorf("worker memory budget %v: a fraction of the host's memory must be over 0 and at most 1", b.Fraction)
	case b.Fraction == 0 && b.Bytes < MinMemory:
		return fmt.Errorf("worker memory budget %s: under the minimum memory limit of a job, %s", FormatSize(b.Bytes), FormatSize(MinMemory))
	}
	return nil
}

// Resolve is the budget in bytes on a host with total bytes of memory. It
// refuses a budget over the host's memory, and one that the largest memory
// limit a job may ask for does not fit in: such a job would wait forever.
func (b MemoryBudget) Resolve(total, maxJob int64) (int64, error) {
	n := b.Bytes
	if n == 0 {
		n = int64(b.Fraction * float64(total))
	}
	if n > total {
		return 0, fmt.Errorf("worker memory budget %s is over the host's memory, %s: lower --memory-budget", bytesize.Rough(n), bytesize.Rough(total))
	}
	if maxJob > n {
		return 0, fmt.Errorf("the maximum memory limit of a job, %s, is over the worker's memory budget of %s (%s of the host's %s): a job asking for it could never start; lower --max-memory or raise --memory-budget",
			bytesize.Rough(maxJob), bytesize.Rough(n), b, bytesize.Rough(total))
	}
	return n, nil
}

// HostMemory is the host's memory (MemTotal in /proc/meminfo), in bytes.
func HostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("host memory: MemTotal %q: %w", v, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	return 0, errors.New("host memory: no MemTotal in /proc/meminfo")
}
