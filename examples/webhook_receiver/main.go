// Command webhook_receiver is a small receiver of sandq's completion
// webhooks: it verifies each delivery's Standard Webhooks signature and
// prints it. Run it beside `sandq dev`:
//
//	go run ./examples/webhook_receiver --secret whsec_... [--addr 127.0.0.1:8099] [--save DIR]
//	sandq enqueue examples/sales_summary.py --input examples/sales.csv --webhook http://127.0.0.1:8099/hook
//
// With --save, each request is also written to DIR as raw HTTP, which
// `sandq webhook verify --secret ... FILE` checks again.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sandq/sandq/jobs/webhook"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8099", "listen address")
	secrets := flag.String("secret", "", "whsec_ signing secret(s), comma-separated")
	save := flag.String("save", "", "directory to save each raw request in")
	flag.Parse()
	if *secrets == "" {
		log.Fatal("--secret is required (sandq dev prints it)")
	}
	keys := strings.Split(*secrets, ",")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := r.Header.Get("webhook-id")
		if err := webhook.Verify(keys, r.Header, body, time.Now()); err != nil {
			fmt.Printf("delivery %q NOT verified: %v\n", id, err)
			http.Error(w, "signature does not verify", http.StatusUnauthorized)
			return
		}
		if *save != "" {
			// The id is verified, but keep only safe characters in a name.
			name := strings.Map(func(r rune) rune {
				if r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
					return r
				}
				return '_'
			}, id)
			r.Body = io.NopCloser(bytes.NewReader(body))
			if raw, err := httputil.DumpRequest(r, true); err == nil {
				os.WriteFile(filepath.Join(*save, fmt.Sprintf("%s-%d.http", name, time.Now().UnixNano())), raw, 0o644)
			}
		}
		var res struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			ExitCode *int   `json:"exit_code"`
			Outputs  []struct {
				Path string `json:"path"`
			} `json:"outputs"`
		}
		json.Unmarshal(body, &res)
		fmt.Printf("delivery %s verified: job %s %s, %d outputs\n", id, res.ID, res.Status, len(res.Outputs))
		w.WriteHeader(http.StatusNoContent)
	})
	log.Printf("listening on http://%s/hook", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
