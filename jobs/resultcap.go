package jobs

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// ManifestName is the object, beside a run's outputs/ and logs/, that holds
// the whole lists of a trimmed result.
const ManifestName = "manifest.json"

// DefaultMaxResultBytes is the default of Config.MaxResultBytes: about 2000
// outputs of ordinary names with their links.
const DefaultMaxResultBytes = 2 << 20

// MinMaxResultBytes is the smallest result size cap a worker accepts.
const MinMaxResultBytes = 64 << 10

// MinOutputsListed is how many outputs a trimmed result keeps while it can
// cut egress requests instead.
const MinOutputsListed = 100

// JSONSize is the length of v's JSON.
func JSONSize(v any) int64 {
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return int64(len(b))
}

// FitResult cuts r's lists, from their end, until its JSON is at most
// maxBytes, and says what it cut in r.Trimmed (see TrimmedDoc for the
// order). It reports whether it cut anything. Whatever cannot be cut
// (identifiers, reasons, the egress policy) stays, so a document made only
// of those may remain over the cap.
func FitResult(r *Result, maxBytes int64) bool {
	if maxBytes <= 0 {
		return false
	}
	size := JSONSize(r)
	if size <= maxBytes {
		return false
	}
	if r.Trimmed == nil {
		r.Trimmed = &TrimmedDoc{}
	}
	t := r.Trimmed
	t.MaxBytes = maxBytes
	if t.Reason == "" {
		t.Reason = fmt.Sprintf("the result document was %d bytes, over the worker's cap of %d: lists were cut from their end", size, maxBytes)
	}
	over := func() int64 { return JSONSize(r) - maxBytes }
	stages := []func() bool{
		func() bool {
			return cutWhere(&r.SkippedOutputs, func(int, SkippedDoc) bool { return true }, over, &t.SkippedOutputs)
		},
		func() bool {
			return cutWhere(&r.Inputs, func(int, InputDoc) bool { return true }, over, &t.Inputs)
		},
		func() bool {
			return cutWhere(&r.Outputs, func(i int, _ OutputDoc) bool { return i >= MinOutputsListed }, over, &t.Outputs)
		},
		func() bool {
			return cutRequests(r, func(e EgressEvent) bool { return e.Decision != EgressAllowed }, over, &t.EgressRequests)
		},
		func() bool {
			return cutRequests(r, func(EgressEvent) bool { return true }, over, &t.EgressRequests)
		},
		func() bool { return foldRefusals(r, over, &t.EgressRefusals) },
		func() bool { return foldDestinations(r, over, &t.EgressDestinations) },
		func() bool {
			return cutWhere(&r.Outputs, func(int, OutputDoc) bool { return true }, over, &t.Outputs)
		},
		func() bool { return cutTails(r, over, &t.LogTailBytes) },
	}
	for _, stage := range stages {
		if over() <= 0 {
			break
		}
		stage()
	}
	return true
}

// cutWhere drops entries for which drop holds, last first, until over
// reports the document fits or none is left to drop; it adds the number
// dropped to n. It keeps a non-nil list non-nil.
func cutWhere[T any](list *[]T, drop func(int, T) bool, over func() int64, n *int) bool {
	cut := false
	for {
		excess := over()
		if excess <= 0 {
			return cut
		}
		// A little more than the excess: the counts in the marker grow too.
		excess += 32
		gone := map[int]bool{}
		var freed int64
		for i := len(*list) - 1; i >= 0 && freed < excess; i-- {
			if drop(i, (*list)[i]) {
				gone[i] = true
				freed += JSONSize((*list)[i]) + 1
			}
		}
		if len(gone) == 0 {
			return cut
		}
		kept := (*list)[:0]
		for i, v := range *list {
			if !gone[i] {
				kept = append(kept, v)
			}
		}
		clear((*list)[len(kept):])
		*list = kept
		*n += len(gone)
		cut = true
	}
}

// cutRequests cuts egress requests for which drop holds, counting them in
// n and, as requests not listed, in the egress document's own count.
func cutRequests(r *Result, drop func(EgressEvent) bool, over func() int64, n *int) bool {
	if r.Egress == nil {
		return false
	}
	before := *n
	cut := cutWhere(&r.Egress.Requests, func(_ int, e EgressEvent) bool { return drop(e) }, over, n)
	r.Egress.RequestsUnlisted += *n - before
	return cut
}

// foldRefusals moves per-destination refusal totals, last first, into
// other_refusals until over reports the document fits: the counts stay.
func foldRefusals(r *Result, over func() int64, n *int) bool {
	if r.Egress == nil {
		return false
	}
	e := r.Egress
	return foldLast(&e.Refusals, over, n, func(x EgressRefusal) {
		if e.OtherRefusals == nil {
			e.OtherRefusals = &EgressOther{}
		}
		e.OtherRefusals.Destinations++
		e.OtherRefusals.Count += x.Count
	})
}

// foldDestinations moves per-destination totals of allowed traffic, last
// first, into other_destinations until over reports the document fits:
// requests and bytes stay counted.
func foldDestinations(r *Result, over func() int64, n *int) bool {
	if r.Egress == nil {
		return false
	}
	e := r.Egress
	return foldLast(&e.Destinations, over, n, func(x EgressDestination) {
		if e.OtherDestinations == nil {
			e.OtherDestinations = &EgressOther{}
		}
		o := e.OtherDestinations
		o.Destinations++
		o.Count += x.Allowed + x.Failed
		o.Allowed += x.Allowed
		o.Failed += x.Failed
		o.BytesOut += x.BytesOut
		o.BytesIn += x.BytesIn
	})
}

// foldLast removes list's last entries, adding each to its total with add,
// until over reports the document fits or the list is empty; it counts
// them in n.
func foldLast[T any](list *[]T, over func() int64, n *int, add func(T)) bool {
	folded := false
	for {
		excess := over()
		if excess <= 0 || len(*list) == 0 {
			return folded
		}
		// A little more than the excess: the totals grow a few digits.
		for freed := int64(0); len(*list) > 0 && freed < excess+32; {
			last := len(*list) - 1
			freed += JSONSize((*list)[last]) + 1
			add((*list)[last])
			var zero T
			(*list)[last] = zero
			*list = (*list)[:last]
			*n++
			folded = true
		}
	}
}

// cutTails cuts the start of the log tails, the longer first, keeping
// their ends, until over reports the document fits.
func cutTails(r *Result, over func() int64, n *int) bool {
	cut := false
	for {
		excess := over()
		if excess <= 0 {
			return cut
		}
		var l *LogDoc
		for _, d := range []*LogDoc{r.Stdout, r.Stderr} {
			if d != nil && d.Tail != "" && (l == nil || len(d.Tail) > len(l.Tail)) {
				l = d
			}
		}
		if l == nil {
			return cut
		}
		drop, freed := 0, int64(0)
		for drop < len(l.Tail) && freed < excess+32 {
			r, size := utf8.DecodeRuneInString(l.Tail[drop:])
			freed += jsonRuneCost(r, size)
			drop += size
		}
		l.Tail = l.Tail[drop:]
		l.Truncated = true
		*n += drop
		cut = true
	}
}

// jsonRuneCost is how many bytes encoding/json writes for a rune of size
// bytes in a string.
func jsonRuneCost(r rune, size int) int64 {
	switch {
	case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t' || r == '\b' || r == '\f':
		return 2
	case r < 0x20 || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029' || (r == utf8.RuneError && size == 1):
		return 6
	}
	return int64(size)
}
