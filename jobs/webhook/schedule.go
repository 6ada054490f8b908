package webhook

import (
	"math/rand/v2"
	"time"
)

// MaxDelay caps every wait between attempts, Retry-After included.
const MaxDelay = 24 * time.Hour

// DefaultGiveUpAfter is the number of attempts, the first included, after
// which delivery stops: with the default delays, about 27.6 hours.
const DefaultGiveUpAfter = 8

// Schedule is the wait between delivery attempts, in the spirit of the
// Standard Webhooks retry schedule: the first attempt at once, then
// Delays[0], Delays[1], ..., the last delay repeated, each moved by up to
// ±Jitter (a fraction) at random.
type Schedule struct {
	Delays []time.Duration
	Jitter float64        // 0.1 is ±10%; clamped to [0, 1]
	Rand   func() float64 // in [0, 1); default math/rand/v2.Float64
	// GiveUpAfter is the total number of attempts, the first included;
	// 0 means DefaultGiveUpAfter.
	GiveUpAfter int
}

// DefaultSchedule is 5s, 5m, 30m, 2h, 5h, 10h, then 10h repeated, ±10%,
// giving up after 8 attempts.
func DefaultSchedule() Schedule {
	return Schedule{
		Delays: []time.Duration{
			5 * time.Second, 5 * time.Minute, 30 * time.Minute,
			2 * time.Hour, 5 * time.Hour, 10 * time.Hour,
		},
		Jitter:      0.1,
		GiveUpAfter: DefaultGiveUpAfter,
	}
}

// Delay is the wait before attempt n+1 after n failed attempts (n >= 1;
// smaller n counts as 1), given the last attempt's RetryAfter: the
// scheduled delay with jitter, or retryAfter when that is later, at most
// MaxDelay. With no Delays it is retryAfter alone.
func (s Schedule) Delay(n int, retryAfter time.Duration) time.Duration {
	n = max(n, 1)
	var d time.Duration
	if len(s.Delays) > 0 {
		base := min(s.Delays[min(n, len(s.Delays))-1], MaxDelay)
		j := min(max(s.Jitter, 0), 1)
		if j > 0 {
			r := rand.Float64
			if s.Rand != nil {
				r = s.Rand
			}
			f := min(max(r(), 0), 1)
			base = time.Duration(float64(base) * (1 + j*(2*f-1)))
		}
		d = base
	}
	d = max(d, retryAfter, 0)
	return min(d, MaxDelay)
}

// Attempts is the total number of attempts, the first included.
func (s Schedule) Attempts() int {
	if s.GiveUpAfter <= 0 {
		return DefaultGiveUpAfter
	}
	return s.GiveUpAfter
}

// Next says, after n attempts of which last is the latest, whether to try
// again and after how long: only a "retry" outcome is tried again, and not
// once Attempts() attempts have been made.
func (s Schedule) Next(n int, last Attempt) (time.Duration, bool) {
	if last.Outcome != OutcomeRetry || n >= s.Attempts() {
		return 0, false
	}
	return s.Delay(n, last.RetryAfter), true
}
