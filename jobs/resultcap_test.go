package jobs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
)

// bigResult is a result with n outputs of long names, a full skipped list
// of escaped long paths, refused egress requests with a few allowed ones in
// between, and log tails of control characters.
func bigResult(outputs, refused int) *Result {
	r := &Result{ID: "job-1", Queue: "default", Status: StatusSucceeded, Runtime: "python", Attempt: 1, Outputs: []OutputDoc{}}
	for i := range outputs {
		p := fmt.Sprintf("out/%05d-%s.txt", i, strings.Repeat("n", 150))
		r.Outputs = append(r.Outputs, OutputDoc{Path: p, Size: int64(i), SHA256: strings.Repeat("a", 64), ContentType: "text/plain; charset=utf-8",
			URL:       "http://127.0.0.1:9000/sandq/jobs/job-1/run-1-sandq-0123456789abcdef/outputs/" + p + "?X-Amz-Signature=" + strings.Repeat("f", 64),
			ExpiresAt: time.Unix(1e9, 0).UTC(), Key: "jobs/job-1/run-1-sandq-0123456789abcdef/outputs/" + p})
	}
	for i := range 100 {
		r.SkippedOutputs = append(r.SkippedOutputs, SkippedDoc{Path: fmt.Sprintf("%03d", i) + strings.Repeat(`\x1b`, 250), Type: "file", Reason: "name has control characters (path shown escaped)"})
	}
	r.SkippedOutputsOmitted = 500
	r.Egress = &EgressDoc{RequestsUnlisted: 7, Asked: []string{"npm"}, Hosts: []string{"registry.example.org"}, Ports: []int{443}, Requests: []EgressEvent{}}
	for i := range refused {
		d := egress.DecisionRefused
		if i%200 == 100 {
			d = egress.DecisionAllowed
		}
		r.Egress.Requests = append(r.Egress.Requests, EgressEvent{Host: fmt.Sprintf("h%04d.example.net", i), Port: 443, Method: "CONNECT", Decision: d, Reason: "not in the allowlist"})
	}
	tail := strings.Repeat("\x1b[31mred\x1b[0m\n", 8<<10/13)
	r.Stdout = &LogDoc{Tail: tail, Bytes: 1 << 20}
	r.Stderr = &LogDoc{Tail: tail[:4<<10], Bytes: 4 << 10}
	return r
}

// checkFit checks r after FitResult against its original: under the cap,
// every list a prefix (in order) of the original with the cut counted.
func checkFit(t *testing.T, orig, r *Result, maxBytes int64) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) > maxBytes {
		t.Errorf("result of %d bytes after fitting, cap %d", len(b), maxBytes)
	}
	tr := r.Trimmed
	if tr == nil || tr.MaxBytes != maxBytes || !strings.Contains(tr.Reason, fmt.Sprint(maxBytes)) {
		t.Fatalf("trimmed marker %+v", tr)
	}
	if len(r.Outputs)+tr.Outputs != len(orig.Outputs) || !reflect.DeepEqual(r.Outputs, orig.Outputs[:len(r.Outputs)]) || r.Outputs == nil {
		t.Errorf("%d outputs kept + %d cut, of %d (kept must be the first, in order)", len(r.Outputs), tr.Outputs, len(orig.Outputs))
	}
	if len(r.SkippedOutputs)+tr.SkippedOutputs != len(orig.SkippedOutputs) || !reflect.DeepEqual(r.SkippedOutputs, orig.SkippedOutputs[:len(r.SkippedOutputs)]) {
		t.Errorf("%d skipped kept + %d cut, of %d", len(r.SkippedOutputs), tr.SkippedOutputs, len(orig.SkippedOutputs))
	}
	if r.SkippedOutputsOmitted != orig.SkippedOutputsOmitted {
		t.Errorf("skipped_outputs_omitted changed to %d", r.SkippedOutputsOmitted)
	}
	if len(r.Egress.Requests)+tr.EgressRequests != len(orig.Egress.Requests) || r.Egress.RequestsUnlisted != orig.Egress.RequestsUnlisted+tr.EgressRequests {
		t.Errorf("%d egress requests kept + %d cut, of %d; %d unlisted", len(r.Egress.Requests), tr.EgressRequests, len(orig.Egress.Requests), r.Egress.RequestsUnlisted)
	}
	for _, l := range [][2]*LogDoc{{orig.Stdout, r.Stdout}, {orig.Stderr, r.Stderr}} {
		if !strings.HasSuffix(l[0].Tail, l[1].Tail) || (l[1].Tail != l[0].Tail && !l[1].Truncated) {
			t.Errorf("log tail cut wrongly: %d of %d bytes kept, truncated %v", len(l[1].Tail), len(l[0].Tail), l[1].Truncated)
		}
	}
	t.Logf("%d bytes: cut %d skipped, %d outputs, %d egress requests, %d tail bytes", len(b), tr.SkippedOutputs, tr.Outputs, tr.EgressRequests, tr.LogTailBytes)
}

func clone(t *testing.T, r *Result) *Result {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseResult(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func allowed(r *Result) int {
	n := 0
	for _, e := range r.Egress.Requests {
		if e.Decision == egress.DecisionAllowed {
			n++
		}
	}
	return n
}

// TestFitResult: a result over the cap is cut in the documented order
// (skipped outputs, outputs beyond the first MinOutputsListed, refused
// egress requests, allowed ones, the other outputs, log tails) only as far
// as needed, and says what it cut.
func TestFitResult(t *testing.T) {
	orig := bigResult(3000, 1000)
	full := JSONSize(orig)
	t.Logf("full result: %d bytes", full)

	t.Run("under the cap", func(t *testing.T) {
		r := clone(t, orig)
		if FitResult(r, full) || r.Trimmed != nil || !reflect.DeepEqual(r, clone(t, orig)) {
			t.Errorf("a result at the cap was changed: %+v", r.Trimmed)
		}
	})
	t.Run("skipped list only", func(t *testing.T) {
		r := clone(t, orig)
		max := full - JSONSize(orig.SkippedOutputs)/2
		if !FitResult(r, max) {
			t.Fatal("not cut")
		}
		checkFit(t, orig, r, max)
		if tr := r.Trimmed; tr.SkippedOutputs == 0 || tr.SkippedOutputs == 100 || tr.Outputs != 0 || tr.EgressRequests != 0 || tr.LogTailBytes != 0 {
			t.Errorf("cut %+v, want only part of the skipped list", tr)
		}
	})
	t.Run("outputs beyond the first N, then refused requests", func(t *testing.T) {
		r := clone(t, orig)
		first := clone(t, orig)
		first.SkippedOutputs, first.Outputs = nil, first.Outputs[:MinOutputsListed]
		max := JSONSize(first) - JSONSize(orig.Egress.Requests)/2
		FitResult(r, max)
		checkFit(t, orig, r, max)
		if tr := r.Trimmed; tr.SkippedOutputs != 100 || len(r.Outputs) != MinOutputsListed || tr.EgressRequests == 0 || tr.LogTailBytes != 0 {
			t.Errorf("cut %+v, %d outputs left; want all skipped, outputs down to %d, then egress requests", tr, len(r.Outputs), MinOutputsListed)
		}
		if allowed(r) != allowed(orig) {
			t.Errorf("%d allowed requests kept of %d: refused ones go first", allowed(r), allowed(orig))
		}
	})
	t.Run("down to the log tails", func(t *testing.T) {
		r := clone(t, orig)
		max := int64(MinMaxResultBytes) / 4
		FitResult(r, max)
		checkFit(t, orig, r, max)
		if tr := r.Trimmed; len(r.Outputs) != 0 || len(r.Egress.Requests) != 0 || tr.LogTailBytes == 0 || r.Stdout.Tail == "" {
			t.Errorf("cut %+v; %d outputs, %d requests, stdout tail %d bytes left", tr, len(r.Outputs), len(r.Egress.Requests), len(r.Stdout.Tail))
		}
	})
	t.Run("idempotent", func(t *testing.T) {
		r := clone(t, orig)
		max := full / 3
		FitResult(r, max)
		again := clone(t, r)
		FitResult(again, max)
		if a, b := mustJSON(t, r), mustJSON(t, again); a != b {
			t.Errorf("a fitted result was cut again: %+v then %+v", r.Trimmed, again.Trimmed)
		}
	})
}

// TestFitResultFoldsEgressTotals: a networked job controls its audit's
// per-destination totals (256 destinations allowed and 256 refused, each
// with a long name and reason); under a small cap they are folded into the
// "other" totals, with every request and byte still counted, and the
// result fits.
func TestFitResultFoldsEgressTotals(t *testing.T) {
	r := &Result{ID: "job-1", Queue: "default", Status: StatusSucceeded, Outputs: []OutputDoc{}, Egress: &EgressDoc{Requests: []EgressEvent{}}}
	e := r.Egress
	var allowed, refused int
	var bytesIn int64
	for i := range 256 {
		host := fmt.Sprintf("%03d%s.example.org", i, strings.Repeat("h", 240))
		e.Destinations = append(e.Destinations, EgressDestination{Host: host, Port: 443, Allowed: 2, Failed: 1, BytesOut: 10, BytesIn: 1000})
		e.Refusals = append(e.Refusals, EgressRefusal{Host: host, Port: 8443, Count: 3, Reason: fmt.Sprintf("port 8443 of host %q is not in this job's allowed ports [80 443]", host)})
		allowed, refused, bytesIn = allowed+2, refused+3, bytesIn+1000
	}
	const limit = 64 << 10
	if size := JSONSize(r); size <= limit {
		t.Fatalf("the audit is only %d bytes; the test needs it over %d", size, limit)
	}
	if !FitResult(r, limit) {
		t.Fatal("FitResult cut nothing")
	}
	if size := JSONSize(r); size > limit {
		t.Errorf("result is %d bytes after fitting, cap %d", size, limit)
	}
	gotAllowed, gotRefused, gotIn := 0, 0, int64(0)
	for _, d := range e.Destinations {
		gotAllowed, gotIn = gotAllowed+d.Allowed, gotIn+d.BytesIn
	}
	for _, f := range e.Refusals {
		gotRefused += f.Count
	}
	if o := e.OtherDestinations; o != nil {
		gotAllowed, gotIn = gotAllowed+o.Allowed, gotIn+o.BytesIn
	}
	if o := e.OtherRefusals; o != nil {
		gotRefused += o.Count
	}
	if gotAllowed != allowed || gotIn != bytesIn || gotRefused != refused {
		t.Errorf("after folding: allowed %d bytes in %d refused %d; want %d, %d, %d", gotAllowed, gotIn, gotRefused, allowed, bytesIn, refused)
	}
	if r.Trimmed.EgressRefusals == 0 || r.Trimmed.EgressRefusals+len(e.Refusals) != 256 || r.Trimmed.EgressDestinations+len(e.Destinations) != 256 {
		t.Errorf("trimmed %+v with %d refusals and %d destinations left", r.Trimmed, len(e.Refusals), len(e.Destinations))
	}
}
