package worker

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/jobs"
)

// TestEgressDocCarriesTheWholeAudit: the result's egress section has the
// proxy's true counts and totals (not counts of the listed requests), its
// per-destination totals and the firewall's bypass count, in jobs' own
// types.
func TestEgressDocCarriesTheWholeAudit(t *testing.T) {
	at := time.Unix(1e9, 0).UTC()
	a := &egress.Audit{
		Allowed: 3, Refused: 1500, Failed: 1, BytesOut: 700, BytesIn: 9000, Unlisted: 504,
		Events: []egress.Event{
			{Time: at, Host: "evil.example", Port: 443, Method: "CONNECT", Decision: egress.DecisionRefused, Reason: "not in the allowlist"},
			{Time: at, Host: "ok.example", Port: 80, Method: "GET", Decision: egress.DecisionAllowed, Reason: "matches", BytesOut: 600, BytesIn: 8000},
		},
		Destinations:      []egress.Destination{{Host: "ok.example", Port: 80, Allowed: 2, Failed: 1, BytesOut: 650, BytesIn: 8500, Destinations: 1}},
		OtherDestinations: &egress.Destination{Allowed: 1, BytesOut: 50, BytesIn: 500, Destinations: 1},
		Refusals:          []egress.Refusal{{Host: "evil.example", Port: 443, Count: 1000, Reason: "not in the allowlist", Destinations: 1}},
		OtherRefusals:     &egress.Refusal{Count: 500, Destinations: 400},
	}
	d := egressDoc(&jobs.NetworkPolicy{Asked: []string{"x"}, Hosts: []string{"ok.example"}, Ports: []int{80}}, a, &jobnet.Bypass{Packets: 7, Bytes: 420})
	if d.Allowed != 3 || d.Refused != 1500 || d.Failed != 1 || d.BytesOut != 700 || d.BytesIn != 9000 || d.RequestsUnlisted != 504 {
		t.Errorf("counts: %+v", d)
	}
	if len(d.Requests) != 2 || d.Requests[1] != (jobs.EgressEvent{Time: at, Host: "ok.example", Port: 80, Method: "GET", Decision: jobs.EgressAllowed, Reason: "matches", BytesOut: 600, BytesIn: 8000}) {
		t.Errorf("requests: %+v", d.Requests)
	}
	if len(d.Destinations) != 1 || d.Destinations[0] != (jobs.EgressDestination{Host: "ok.example", Port: 80, Allowed: 2, Failed: 1, BytesOut: 650, BytesIn: 8500}) {
		t.Errorf("destinations: %+v", d.Destinations)
	}
	if o := d.OtherDestinations; o == nil || *o != (jobs.EgressOther{Destinations: 1, Count: 1, Allowed: 1, BytesOut: 50, BytesIn: 500}) {
		t.Errorf("other destinations: %+v", o)
	}
	if len(d.Refusals) != 1 || d.Refusals[0].Count != 1000 || d.OtherRefusals == nil || *d.OtherRefusals != (jobs.EgressOther{Destinations: 400, Count: 500}) {
		t.Errorf("refusals: %+v, other %+v", d.Refusals, d.OtherRefusals)
	}
	if d.Bypass == nil || *d.Bypass != (jobs.EgressBypass{Attempts: 7, Bytes: 420}) {
		t.Errorf("bypass: %+v", d.Bypass)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"requests_unlisted":504`, `"bypass":{"attempts":7,"bytes":420}`, `"other_refusals":{"destinations":400,"count":500}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}

	// Without an audit or a bypass count: empty lists, no bypass.
	d = egressDoc(&jobs.NetworkPolicy{}, nil, nil)
	if d.Requests == nil || d.Destinations == nil || d.Refusals == nil || d.Bypass != nil {
		t.Errorf("empty audit: %+v", d)
	}
}
