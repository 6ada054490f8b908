package webhook

import (
	"testing"
	"time"
)

func TestDefaultScheduleDelays(t *testing.T) {
	want := []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour, 10 * time.Hour}
	s := DefaultSchedule()
	s.Rand = func() float64 { return 0.5 } // no jitter at the middle
	for i, w := range want {
		if got := s.Delay(i+1, 0); got != w {
			t.Errorf("Delay(%d, 0) = %s, want %s", i+1, got, w)
		}
	}
	if got := s.Delay(0, 0); got != 5*time.Second {
		t.Errorf("Delay(0, 0) = %s, want the first delay", got)
	}
}

func TestScheduleJitter(t *testing.T) {
	s := DefaultSchedule()
	for _, c := range []struct {
		r    float64
		n    int
		want time.Duration
	}{
		{0, 1, 4500 * time.Millisecond},         // -10%
		{0.75, 2, 315 * time.Second},            // +5%
		{0.25, 6, 9*time.Hour + 30*time.Minute}, // -5%
	} {
		s.Rand = func() float64 { return c.r }
		a, b := s.Delay(c.n, 0), s.Delay(c.n, 0)
		if a != c.want || a != b {
			t.Errorf("Rand=%v: Delay(%d) = %s then %s, want %s both times", c.r, c.n, a, b, c.want)
		}
	}
	// The real random source stays within ±10%.
	s.Rand = nil
	base := 5 * time.Minute
	for range 1000 {
		d := s.Delay(2, 0)
		if d < base*9/10 || d > base*11/10 {
			t.Fatalf("Delay(2) = %s, outside 5m ±10%%", d)
		}
	}
}

func TestScheduleRetryAfter(t *testing.T) {
	s := DefaultSchedule()
	s.Rand = func() float64 { return 0.5 }
	if got := s.Delay(1, time.Hour); got != time.Hour {
		t.Errorf("Retry-After 1h later than 5s: Delay = %s, want 1h", got)
	}
	if got := s.Delay(2, time.Second); got != 5*time.Minute {
		t.Errorf("Retry-After 1s earlier than 5m: Delay = %s, want 5m", got)
	}
	if got := s.Delay(1, 48*time.Hour); got != MaxDelay {
		t.Errorf("Retry-After 48h: Delay = %s, want the 24h cap", got)
	}
	long := Schedule{Delays: []time.Duration{100 * time.Hour}, Jitter: 0.1, Rand: func() float64 { return 0.99 }}
	if got := long.Delay(1, 0); got != MaxDelay {
		t.Errorf("a 100h delay: Delay = %s, want the 24h cap", got)
	}
	if got := (Schedule{}).Delay(3, 7*time.Second); got != 7*time.Second {
		t.Errorf("no delays: Delay = %s, want Retry-After", got)
	}
}

func TestScheduleGiveUp(t *testing.T) {
	s := DefaultSchedule()
	s.Rand = func() float64 { return 0.5 }
	if s.Attempts() != 8 || (Schedule{}).Attempts() != DefaultGiveUpAfter {
		t.Fatalf("Attempts = %d, zero value %d; want 8", s.Attempts(), (Schedule{}).Attempts())
	}
	retry := Attempt{Outcome: OutcomeRetry}
	var total time.Duration
	n := 1
	for ; ; n++ {
		d, again := s.Next(n, retry)
		if !again {
			break
		}
		total += d
	}
	if n != 8 {
		t.Errorf("gave up after %d attempts, want 8", n)
	}
	if want := 27*time.Hour + 35*time.Minute + 5*time.Second; total != want {
		t.Errorf("total wait %s, want %s", total, want)
	}
	if d, again := s.Next(1, Attempt{Outcome: OutcomeRetry, RetryAfter: 2 * time.Minute}); !again || d != 2*time.Minute {
		t.Errorf("Next with Retry-After 2m = %s, %v", d, again)
	}
	for _, o := range []string{OutcomeDelivered, OutcomeFailed, OutcomeGone} {
		if _, again := s.Next(1, Attempt{Outcome: o}); again {
			t.Errorf("outcome %s is retried", o)
		}
	}
}
