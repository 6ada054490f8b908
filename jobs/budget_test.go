package jobs

import (
	"strings"
	"testing"
)

func TestParseMemoryBudget(t *testing.T) {
	ok := []struct {
		in   string
		want MemoryBudget
	}{
		{"0.75", MemoryBudget{Fraction: 0.75}},
		{"1", MemoryBudget{Fraction: 1}},
		{" 0.5 ", MemoryBudget{Fraction: 0.5}},
		{"75%", MemoryBudget{Fraction: 0.75}},
		{"100%", MemoryBudget{Fraction: 1}},
		{"8GiB", MemoryBudget{Bytes: 8 << 30}},
		{"512MiB", MemoryBudget{Bytes: 512 << 20}},
		{"1.5G", MemoryBudget{Bytes: 3 << 29}},
		{"2", MemoryBudget{Bytes: 2}}, // bytes; refused by Validate as under the minimum
	}
	for _, c := range ok {
		got, err := ParseMemoryBudget(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseMemoryBudget(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "0", "0%", "-0.5", "-5%", "abc", "GiB", "75 percent", "0B"} {
		if got, err := ParseMemoryBudget(in); err == nil {
			t.Errorf("ParseMemoryBudget(%q) = %+v, want an error", in, got)
		}
	}
	for _, b := range []MemoryBudget{DefaultMemoryBudget, {Fraction: 0.5}, {Bytes: 8 << 30}} {
		if got, err := ParseMemoryBudget(b.String()); err != nil || got != b {
			t.Errorf("ParseMemoryBudget(%q) = %+v, %v; want %+v back", b.String(), got, err, b)
		}
	}
}

func TestMemoryBudgetValidate(t *testing.T) {
	c := validConfig()
	if c.Worker.MemoryBudget != DefaultMemoryBudget || DefaultMemoryBudget.Fraction != 0.75 {
		t.Errorf("default memory budget %+v", c.Worker.MemoryBudget)
	}
	for _, b := range []MemoryBudget{{Fraction: 1}, {Fraction: 0.01}, {Bytes: MinMemory}} {
		c.Worker.MemoryBudget = b
		if err := c.Validate(); err != nil {
			t.Errorf("budget %+v: %v", b, err)
		}
	}
	for _, r := range []struct {
		b    MemoryBudget
		want string
	}{
		{MemoryBudget{Fraction: 1.5}, "over 0 and at most 1"},
		{MemoryBudget{Fraction: -0.1}, "over 0 and at most 1"},
		{MemoryBudget{Bytes: MinMemory - 1}, "under the minimum memory limit"},
		{MemoryBudget{Fraction: 0.5, Bytes: 1 << 30}, "not both"},
	} {
		c.Worker.MemoryBudget = r.b
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("budget %+v: Validate = %v, want %q", r.b, err, r.want)
		}
	}
}

func TestHostMemory(t *testing.T) {
	n, err := HostMemory()
	if err != nil || n < 64<<20 {
		t.Fatalf("HostMemory = %d, %v", n, err)
	}
}
