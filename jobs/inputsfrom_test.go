package jobs

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseInputFrom(t *testing.T) {
	for _, c := range []struct {
		in   string
		want InputFrom
	}{
		{"3f1c9a2e-0b7d-4c1e-9a55-1d2e3f4a5b6c", InputFrom{Job: "3f1c9a2e-0b7d-4c1e-9a55-1d2e3f4a5b6c"}},
		{"job1:*.csv", InputFrom{Job: "job1", Glob: "*.csv"}},
		{"job1:plots/*.png", InputFrom{Job: "job1", Glob: "plots/*.png"}},
		// Only the first colon ends the ID: the rest is the glob.
		{"job1:a:b.txt", InputFrom{Job: "job1", Glob: "a:b.txt"}},
		{`job1:report\[1\].csv`, InputFrom{Job: "job1", Glob: `report\[1\].csv`}},
		{"k-0123abcd:[ab]?.json", InputFrom{Job: "k-0123abcd", Glob: "[ab]?.json"}},
	} {
		got, err := ParseInputFrom(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseInputFrom(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"", `job ID "" is not valid`},
		{":*.csv", `job ID "" is not valid`},
		{"job1:", "empty glob after the colon"},
		{"../job1:*.csv", `job ID "../job1" is not valid`},
		{"job 1:*.csv", `job ID "job 1" is not valid`},
		{"job1:[a-", `glob "[a-" is not a valid pattern`},
		{"job1:*.csv\\", `is not a valid pattern`},
		{"job1:/etc/*", "is absolute"},
		{"job1:a\x00b", "contains NUL"},
		{"job1:\xff*", "not valid UTF-8"},
		{"job1:" + strings.Repeat("a", MaxGlobBytes+1), "over the maximum of 1024"},
	} {
		_, err := ParseInputFrom(c.in)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "inputs_from" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseInputFrom(%q): %v; want a refusal of inputs_from saying %q", c.in, err, c.want)
		}
	}
}

// TestCheckInputsFromRefusesTheAPIShape: what the API's JSON can say and
// the flag cannot (a glob of "" is all outputs; an ID with a colon is
// refused, not split).
func TestCheckInputsFromRefusesTheAPIShape(t *testing.T) {
	if err := CheckInputsFrom([]InputFrom{{Job: "a"}, {Job: "b", Glob: "*"}}); err != nil {
		t.Errorf("valid entries: %v", err)
	}
	for _, f := range []InputFrom{{Job: "a:b"}, {Job: "a", Glob: "[z"}, {Job: ""}} {
		if err := CheckInputsFrom([]InputFrom{{Job: "ok"}, f}); err == nil {
			t.Errorf("%+v: accepted", f)
		}
	}
}

func TestInputDocsCarryTheOrigin(t *testing.T) {
	j := &Job{Inputs: []FileRef{
		{Name: "up.csv", Key: "jobs/x/in-1/inputs/up.csv", Size: 3, SHA256: "aa"},
		{Name: "out/a.csv", Key: "jobs/x/in-1/inputs/out/a.csv", Size: 5, SHA256: "bb", From: &InputOrigin{Job: "j1", Path: "out/a.csv"}},
	}}
	docs := InputDocs(j)
	if len(docs) != 2 || docs[0].From != nil || docs[1].From == nil || *docs[1].From != (InputOrigin{Job: "j1", Path: "out/a.csv"}) || docs[1].SHA256 != "bb" || docs[1].Size != 5 {
		t.Errorf("InputDocs = %+v", docs)
	}
}

// TestFitResultCutsInputs: a result whose inputs list puts it over the cap
// loses inputs from the end, after the skipped outputs and before any
// output, and says how many.
func TestFitResultCutsInputs(t *testing.T) {
	r := &Result{ID: "j", Outputs: []OutputDoc{{Path: "out.csv", SHA256: strings.Repeat("a", 64)}}}
	for i := range 100 {
		r.Inputs = append(r.Inputs, InputDoc{Name: fmt.Sprintf("%s-%03d.csv", strings.Repeat("n", 200), i), SHA256: strings.Repeat("b", 64),
			From: &InputOrigin{Job: "step-1", Path: fmt.Sprintf("%s-%03d.csv", strings.Repeat("n", 200), i)}})
	}
	full := JSONSize(r)
	max := full - full/4
	if !FitResult(r, max) || JSONSize(r) > max {
		t.Fatalf("not fitted: %d bytes, cap %d", JSONSize(r), max)
	}
	if n := r.Trimmed.Inputs; n == 0 || n+len(r.Inputs) != 100 || len(r.Outputs) != 1 || r.Trimmed.Outputs != 0 {
		t.Errorf("cut %+v: %d inputs and %d outputs left", r.Trimmed, len(r.Inputs), len(r.Outputs))
	}
	if last := r.Inputs[len(r.Inputs)-1].Name; !strings.HasSuffix(last, fmt.Sprintf("-%03d.csv", len(r.Inputs)-1)) {
		t.Errorf("the inputs kept are not the first ones: last is %s", last)
	}
}
