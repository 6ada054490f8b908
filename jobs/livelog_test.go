package jobs

import (
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// asRead is an entry as XRANGE or XREAD returns it: Redis keeps every
// field as a string, and go-redis writes numbers in decimal.
func asRead(id string, values map[string]any) redis.XMessage {
	m := redis.XMessage{ID: id, Values: map[string]any{}}
	for k, v := range values {
		m.Values[k] = fmt.Sprint(v)
	}
	return m
}

// Every kind of entry reads back as it was written, its ID from Redis.
func TestLogEventRoundTrip(t *testing.T) {
	for _, e := range []LogEvent{
		{Attempt: 1, Stream: "stdout", Data: "hello\n"},
		{Attempt: 2, Stream: "stderr", Data: "\xff half a rune \xe2\x82"},
		{Attempt: 1, Stream: "stdout", Data: ""},
		{Attempt: 3, Dropped: 99_000_000},
		{Attempt: 1, End: true},
		{Attempt: 4, Dropped: 7, End: true},
	} {
		e.ID = "1700000000000-3"
		got, err := DecodeLogEvent(asRead(e.ID, e.Values()))
		if err != nil || got != e {
			t.Errorf("%+v read back as %+v (%v)", e, got, err)
		}
	}
}

// Entries that are not a live output's are refused, naming the entry and
// the field.
func TestDecodeLogEventRefusals(t *testing.T) {
	for _, c := range []struct {
		values map[string]any
		msg    string
	}{
		{map[string]any{"s": "stdout", "d": "x"}, `attempt "" is not a positive number`},
		{map[string]any{"a": "0", "s": "stdout", "d": "x"}, `attempt "0"`},
		{map[string]any{"a": "-1", "e": "1"}, `attempt "-1"`},
		{map[string]any{"a": "two", "e": "1"}, `attempt "two"`},
		{map[string]any{"a": "1", "s": "stdin", "d": "x"}, `stream "stdin" is neither stdout nor stderr`},
		{map[string]any{"a": "1", "x": "-5"}, `dropped count "-5" is not a count`},
		{map[string]any{"a": "1", "x": "many"}, `dropped count "many"`},
	} {
		_, err := DecodeLogEvent(redis.XMessage{ID: "5-0", Values: c.values})
		if err == nil || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "entry 5-0") {
			t.Errorf("%v: %v, want an error naming entry 5-0 and saying %q", c.values, err, c.msg)
		}
	}
}
