package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// hostileStatus is a finished job whose result carries terminal escape
// sequences everywhere a job (or a receiver, or a host it asked for) can
// put text.
func hostileStatus() *jobs.JobStatus {
	code := 0
	return &jobs.JobStatus{ID: "job-1", Queue: "default", State: jobs.StateDone,
		Result: &jobs.Result{
			ID: "job-1", Queue: "default", Status: jobs.StatusSucceeded, ExitCode: &code,
			Reason:         "killed \x1b[2J\x1b[H cleared",
			Stdout:         &jobs.LogDoc{Tail: "\x1b]0;pwned title\x07line one\n\tindented\r\x1b[1Aoverwritten\u009b31m C1 CSI \x9b raw\n", Bytes: 70, URL: "http://s3/x?sig=1"},
			Stderr:         &jobs.LogDoc{Tail: "right-to-left \u202eexe.txt\u202c\x00nul\n", Bytes: 30, URL: "http://s3/y?sig=1"},
			Outputs:        []jobs.OutputDoc{{Path: "evil\x1b[31m.txt", Size: 3, SHA256: strings.Repeat("a", 64), URL: "http://s3/evil%1B.txt?sig=1", ExpiresAt: time.Unix(1e9, 0)}},
			SkippedOutputs: []jobs.SkippedDoc{{Path: "link\x1b[8m", Type: "symlink", Reason: "not a regular file\x1b[0m"}},
			Egress: &jobs.EgressDoc{Hosts: []string{"ok.example"}, Requests: []jobs.EgressEvent{
				{Host: "evil\x1b]8;;http://x\x07.example", Port: 443, Decision: egress.DecisionRefused, Reason: "not allowed\x1b[5m"},
			}},
		},
		Webhook: &webhook.Status{URL: "http://hook/\x1b[2J", ID: "msg_1", State: "failed\x1b[K", Attempts: []webhook.Attempt{
			{Time: time.Unix(1e9, 0), Outcome: webhook.OutcomeRetry, StatusCode: 500, Error: "receiver said \x1b[31mno\x1b[0m"},
		}},
	}
}

// TestHumanOutputEscapesControlCharacters: nothing a job controls reaches
// the terminal raw; log tails keep their newlines and tabs; --json stays
// JSON.
func TestHumanOutputEscapesControlCharacters(t *testing.T) {
	var out bytes.Buffer
	printHuman(&out, hostileStatus())
	s := out.String()
	t.Logf("\n%s", s)
	for _, bad := range []string{"\x1b", "\x07", "\r", "\x00", "\x9b", "\u202e", "\u202c"} {
		if strings.Contains(s, bad) {
			t.Errorf("human output carries %+q raw", bad)
		}
	}
	for _, want := range []string{
		`\x1b]0;pwned title\x07line one` + "\n\tindented" + `\r\x1b[1Aoverwritten\u009b31m C1 CSI \x9b raw` + "\n",
		`right-to-left \u202eexe.txt\u202c\x00nul` + "\n",
		`evil\x1b[31m.txt`, `skipped link\x1b[8m (symlink): not a regular file\x1b[0m`,
		`killed \x1b[2J\x1b[H cleared`, `evil\x1b]8;;http://x\x07.example:443 not allowed\x1b[5m`,
		`webhook http://hook/\x1b[2J`, `failed\x1b[K`, `receiver said \x1b[31mno\x1b[0m`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("human output lacks %q", want)
		}
	}

	// A job not done yet: its last error (which may quote a job's file
	// names) is escaped too.
	out.Reset()
	printHuman(&out, &jobs.JobStatus{ID: "job-2", Queue: "default", State: jobs.StateRetry, Retried: 1, MaxRetry: 3, LastError: "walk outputs: open \x1b[2Jx"})
	if strings.Contains(out.String(), "\x1b") || !strings.Contains(out.String(), `open \x1b[2Jx`) {
		t.Errorf("last error printed as %q", out.String())
	}

	// --json: the same status, escaped by JSON and still the same text.
	out.Reset()
	if err := printJSON(&out, jobs.StatusDoc{Result: hostileStatus().Result}); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out.String(), "\x1b\x07\r\x00") || !strings.Contains(out.String(), `evil\u001b[31m.txt`) {
		t.Errorf("--json output carries raw control characters:\n%s", out.String())
	}
}
