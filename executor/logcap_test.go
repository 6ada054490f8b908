package executor

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// stream is n deterministic bytes that are not periodic in any small
// period, so a misplaced slice shows up as a mismatch.
func stream(n int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
		if r.IntN(40) == 0 {
			b[i] = '\n'
		}
	}
	return b
}

// lastN is the last n bytes of b, or all of b.
func lastN(b []byte, n int) []byte {
	if n > len(b) {
		n = len(b)
	}
	return b[len(b)-n:]
}

// capture writes data to a new LogCapture in chunks of the sizes given
// (cycled; a single 0 means one write of everything) and closes it.
func capture(t *testing.T, data []byte, headMax, tailMax int64, resultTail int, chunks ...int) (*LogCapture, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stdout.log")
	l, err := NewLogCapture(path, headMax, tailMax, resultTail)
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) == 0 {
		chunks = []int{0}
	}
	for i, off := 0, 0; off < len(data); i++ {
		n := chunks[i%len(chunks)]
		if n == 0 || off+n > len(data) {
			n = len(data) - off
		}
		w, err := l.Write(data[off : off+n])
		if err != nil || w != n {
			t.Fatalf("Write(%d bytes) = %d, %v", n, w, err)
		}
		off += n
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return l, got
}

func TestLogCapture(t *testing.T) {
	odd := []int{1, 7, 13, 251, 997, 3, 4096, 2, 65537, 5}

	tests := []struct {
		name       string
		n          int // stream length
		headMax    int64
		tailMax    int64
		resultTail int
		chunks     []int
		dropped    int64
	}{
		{"empty stream", 0, 1024, 256, 16, nil, 0},
		{"smaller than the head, one write", 100, 1024, 256, 16, nil, 0},
		{"smaller than the head, byte by byte", 100, 1024, 256, 16, []int{1}, 0},
		{"smaller than the result tail", 10, 1024, 256, 16, nil, 0},
		{"exactly the head", 1024, 1024, 256, 16, []int{100}, 0},
		{"into the tail, not past it", 1200, 1024, 256, 16, odd, 0},
		{"exactly head plus tail", 1024 + 256, 1024, 256, 16, odd, 0},
		{"one byte dropped", 1024 + 256 + 1, 1024, 256, 16, odd, 1},
		{"much larger, odd chunks", 1_000_003, 1000, 300, 77, odd, 1_000_003 - 1000 - 300},
		{"much larger, one write", 1_000_003, 1000, 300, 77, nil, 1_000_003 - 1000 - 300},
		{"much larger, byte by byte", 50_001, 1000, 300, 77, []int{1}, 50_001 - 1000 - 300},
		{"chunks larger than the tail", 200_000, 1000, 300, 77, []int{4099}, 200_000 - 1000 - 300},
		{"result tail longer than the kept tail", 100_000, 1000, 300, 5000, odd, 100_000 - 1000 - 300},
		{"no head", 10_000, 0, 300, 77, odd, 10_000 - 300},
		{"no tail", 10_000, 1000, 0, 77, odd, 10_000 - 1000},
		{"no result tail", 10_000, 1000, 300, 0, odd, 10_000 - 1000 - 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := stream(tt.n)
			l, file := capture(t, data, tt.headMax, tt.tailMax, tt.resultTail, tt.chunks...)

			var want []byte
			if tt.dropped == 0 {
				want = data
			} else {
				want = append(want, data[:tt.headMax]...)
				want = append(want, fmt.Sprintf("\n[sandq: %d bytes dropped here]\n", tt.dropped)...)
				want = append(want, lastN(data, int(tt.tailMax))...)
			}
			if !bytes.Equal(file, want) {
				t.Errorf("file: %d bytes, want %d\n got: %s\nwant: %s", len(file), len(want), excerpt(file), excerpt(want))
			}

			s := l.Summary()
			if s.Bytes != int64(tt.n) {
				t.Errorf("Bytes = %d, want %d", s.Bytes, tt.n)
			}
			if s.DroppedBytes != tt.dropped {
				t.Errorf("DroppedBytes = %d, want %d", s.DroppedBytes, tt.dropped)
			}
			if wantTail := lastN(data, tt.resultTail); !bytes.Equal(s.Tail, wantTail) {
				t.Errorf("Tail = %q, want %q", excerpt(s.Tail), excerpt(wantTail))
			}
			if s.Path != filepath.Join(filepath.Dir(s.Path), "stdout.log") {
				t.Errorf("Path = %q", s.Path)
			}
		})
	}
}

func excerpt(b []byte) string {
	if len(b) <= 80 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q ... %q", b[:40], b[len(b)-40:])
}

func TestLogCaptureSummaryTailIsACopy(t *testing.T) {
	l, _ := capture(t, []byte("0123456789"), 4, 4, 4)
	s := l.Summary()
	s.Tail[0] = 'X'
	if got := l.Summary().Tail; string(got) != "6789" {
		t.Errorf("Tail after changing an earlier copy = %q, want %q", got, "6789")
	}
}

func TestLogCaptureClose(t *testing.T) {
	t.Run("twice", func(t *testing.T) {
		l, _ := capture(t, stream(5000), 100, 100, 10)
		if err := l.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
	})
	t.Run("file is not overwritten", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "log")
		if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := NewLogCapture(path, 10, 10, 10); err == nil {
			l.Close()
			t.Fatal("NewLogCapture over an existing file succeeded")
		}
		if b, _ := os.ReadFile(path); string(b) != "keep" {
			t.Errorf("existing file now %q", b)
		}
	})
	t.Run("file mode 0600", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "log")
		l, err := NewLogCapture(path, 10, 10, 10)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("mode = %v, want no group or other access", st.Mode())
		}
	})
}

func TestRing(t *testing.T) {
	tests := []struct {
		name   string
		size   int
		writes []string
		want   string
	}{
		{"empty", 8, nil, ""},
		{"empty write", 8, []string{""}, ""},
		{"partial", 8, []string{"abc"}, "abc"},
		{"partial, two writes", 8, []string{"abc", "de"}, "abcde"},
		{"exactly full in one write", 8, []string{"abcdefgh"}, "abcdefgh"},
		{"exactly full at the boundary", 8, []string{"abc", "defgh"}, "abcdefgh"},
		{"exactly full, then empty write", 8, []string{"abc", "defgh", ""}, "abcdefgh"},
		{"exactly full, then one byte", 8, []string{"abc", "defgh", "i"}, "bcdefghi"},
		{"wraps twice exactly", 8, []string{"abcd", "efgh", "ijkl", "mnop"}, "ijklmnop"},
		{"wrap inside a write", 8, []string{"abcdef", "ghij"}, "cdefghij"},
		{"write longer than the ring", 8, []string{"ab", "0123456789"}, "23456789"},
		{"write longer, then a short one", 8, []string{"0123456789", "xy"}, "456789xy"},
		{"byte by byte", 3, []string{"a", "b", "c", "d", "e"}, "cde"},
		{"size one", 1, []string{"abc", "d", ""}, "d"},
		{"size zero", 0, []string{"abc", "d"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing(tt.size)
			for _, w := range tt.writes {
				r.write([]byte(w))
			}
			if got := string(r.bytes()); got != tt.want {
				t.Errorf("bytes() = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("does not keep the caller's slice", func(t *testing.T) {
		r := newRing(4)
		p := []byte("abcdef")
		r.write(p)
		copy(p, "XXXXXX")
		if got := string(r.bytes()); got != "cdef" {
			t.Errorf("bytes() = %q, want %q", got, "cdef")
		}
	})

	t.Run("against a model", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 11))
		for _, size := range []int{1, 2, 3, 8, 16, 100} {
			r := newRing(size)
			var all []byte
			for i := range 2000 {
				n := rng.IntN(2*size + 2)
				p := make([]byte, n)
				for j := range p {
					p[j] = byte(rng.IntN(256))
				}
				r.write(p)
				all = append(all, p...)
				if got, want := r.bytes(), lastN(all, size); !bytes.Equal(got, want) {
					t.Fatalf("size %d, after write %d (%d bytes): bytes() = %x, want %x", size, i, n, got, want)
				}
			}
		}
	})
}

// A ring's buffer grows with what is written and never past its size: a
// short stream costs a short buffer. Across random write sizes it keeps
// exactly the last bytes, while growing and after it wraps.
func TestRingGrowsOnlyAsWritten(t *testing.T) {
	r := newRing(2 << 20)
	r.write([]byte("hello\n"))
	if c := cap(r.buf); c > 4096 {
		t.Fatalf("a 6-byte stream holds a %d-byte buffer", c)
	}
	for _, size := range []int{1, 7, 512, 4096, 100000} {
		data := stream(5*size + 3)
		rng := rand.New(rand.NewPCG(uint64(size), 2))
		r := newRing(size)
		for off := 0; off < len(data); {
			n := min(rng.IntN(2*size+1), len(data)-off)
			r.write(data[off : off+n])
			off += n
			if got, want := r.bytes(), lastN(data[:off], size); !bytes.Equal(got, want) {
				t.Fatalf("size %d after %d bytes: kept %d bytes, not the last %d", size, off, len(got), len(want))
			}
			if cap(r.buf) > size {
				t.Fatalf("size %d: buffer of %d bytes", size, cap(r.buf))
			}
		}
	}
}
