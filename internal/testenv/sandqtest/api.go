package sandqtest

import (
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// API serves the job API in the test binary (httptest, on loopback) with
// cfg and store, for tenants (name -> what each may do), until the test
// ends. It returns the server's URL and each tenant's bearer token.
func API(t testing.TB, cfg jobs.Config, store *storage.Store, logger *slog.Logger, tenants map[string]api.Tenant) (string, map[string]string) {
	t.Helper()
	auth := &api.AuthConfig{Tenants: tenants}
	toks := map[string]string{}
	for tenant := range tenants {
		tok, entry, err := api.NewToken(tenant, "test")
		if err != nil {
			t.Fatal(err)
		}
		auth.Tokens = append(auth.Tokens, entry)
		toks[tenant] = tok
	}
	if err := auth.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := api.New(api.Config{Jobs: cfg, Store: store, Auth: auth, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	return srv.URL, toks
}
