package jobs

import (
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Live output. While a job runs, the worker appends its stdout and stderr
// to a Redis stream (keys.LiveLog) in the order they were read from the
// sandbox, as entries of these fields:
//
//	a  the attempt (1 for the first run, 2 for its first retry, ...)
//	s  "stdout" or "stderr"; absent on markers
//	d  the bytes, as written (a chunk may split a line or a UTF-8 sequence)
//	x  a marker: bytes dropped since the previous entry, because the job
//	   wrote faster than the stream's cap allows or Redis fell behind
//	e  "1" on the attempt's last entry: its output has ended
//
// The stream's entry IDs order every event of every attempt, and a
// follower resumes after the last ID it saw.
const (
	liveFieldAttempt = "a"
	liveFieldStream  = "s"
	liveFieldData    = "d"
	liveFieldDropped = "x"
	liveFieldEnd     = "e"
)

// LogEvent is one entry of a job's live output.
type LogEvent struct {
	// ID is the entry's ID in the stream; a follower resumes after it.
	ID string `json:"id"`
	// Attempt is the run of the job the entry came from.
	Attempt int `json:"attempt"`
	// Stream is "stdout" or "stderr"; empty on markers.
	Stream string `json:"stream,omitempty"`
	// Data is what the job wrote, as written.
	Data string `json:"data,omitempty"`
	// Dropped counts bytes of output left out before this entry.
	Dropped int64 `json:"dropped,omitempty"`
	// End is set on the attempt's last entry.
	End bool `json:"end,omitempty"`
}

// Values are the entry's fields for XADD (its ID is Redis's to choose).
func (e LogEvent) Values() map[string]any {
	v := map[string]any{liveFieldAttempt: e.Attempt}
	if e.Stream != "" {
		v[liveFieldStream] = e.Stream
		v[liveFieldData] = e.Data
	}
	if e.Dropped > 0 {
		v[liveFieldDropped] = e.Dropped
	}
	if e.End {
		v[liveFieldEnd] = "1"
	}
	return v
}

// DecodeLogEvent reads an entry of a live output stream.
func DecodeLogEvent(m redis.XMessage) (LogEvent, error) {
	e := LogEvent{ID: m.ID}
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	n, err := strconv.Atoi(str(liveFieldAttempt))
	if err != nil || n < 1 {
		return e, fmt.Errorf("live output entry %s: attempt %q is not a positive number", m.ID, str(liveFieldAttempt))
	}
	e.Attempt = n
	e.Stream, e.Data = str(liveFieldStream), str(liveFieldData)
	if e.Stream != "" && e.Stream != "stdout" && e.Stream != "stderr" {
		return e, fmt.Errorf("live output entry %s: stream %q is neither stdout nor stderr", m.ID, e.Stream)
	}
	if x := str(liveFieldDropped); x != "" {
		if e.Dropped, err = strconv.ParseInt(x, 10, 64); err != nil || e.Dropped < 0 {
			return e, fmt.Errorf("live output entry %s: dropped count %q is not a count", m.ID, x)
		}
	}
	e.End = str(liveFieldEnd) == "1"
	return e, nil
}
