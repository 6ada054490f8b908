package sandqdev

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// Start hands the worker and the server each their own S3 user and the
// settings files it wrote, passes the parent's settings to both and the
// worker's own (WorkerEnv) to the worker only, opens the
// dashboard only on loopback, and Stop leaves no process behind. A stand-in
// for the sandq binary records what each child got.
func TestStartHandsEachChildItsSettings(t *testing.T) {
	testenv.NeedBinary(t, "redis-server", "minio")
	dir := t.TempDir()
	out := t.TempDir()
	fake := filepath.Join(out, "sandq")
	os.WriteFile(fake, []byte("#!/bin/sh\nenv | grep '^SANDQ_' | sort > \""+out+"/$1.env\"\nexec sleep 60\n"), 0o755)
	d, err := Start(context.Background(), Options{
		Dir: dir, Sandq: fake, Env: []string{"SANDQ_REDIS_DB=3"}, WorkerEnv: []string{"SANDQ_SNAPSHOTS=true", "SANDQ_SNAPSHOT_POOL=2"},
		AccessKey: "dev-root", SecretKey: "dev-root-secret", Bucket: "sandq", ExpiryDays: 9, Listen: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	env := func(name string) string {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if b, err := os.ReadFile(filepath.Join(out, name+".env")); err == nil && len(b) > 0 {
				return string(b)
			}
		}
		t.Fatalf("%s never started", name)
		return ""
	}
	worker, server := env("worker"), env("serve")
	for _, c := range []struct {
		who, env string
		want     []string
	}{
		{"worker", worker, []string{"SANDQ_REDIS_DB=3", "SANDQ_S3_ACCESS_KEY=" + d.Access.Worker.AccessKey, "SANDQ_EGRESS_CONFIG=" + filepath.Join(dir, "egress.json"), "SANDQ_WEBHOOK_CONFIG=" + filepath.Join(dir, "webhook.json"),
			"SANDQ_SNAPSHOTS=true", "SANDQ_SNAPSHOT_POOL=2"}},
		{"server", server, []string{"SANDQ_REDIS_DB=3", "SANDQ_S3_ACCESS_KEY=" + d.Access.Producer.AccessKey, "SANDQ_AUTH_CONFIG=" + filepath.Join(dir, "auth.json"), "SANDQ_OPEN_DASHBOARD=true"}},
	} {
		for _, w := range c.want {
			if !strings.Contains(c.env, w+"\n") {
				t.Errorf("%s lacks %s:\n%s", c.who, w, c.env)
			}
		}
		if c.who == "server" && strings.Contains(c.env, "SANDQ_SNAPSHOT") {
			t.Errorf("the server got the worker's own settings:\n%s", c.env)
		}
		if strings.Contains(c.env, "dev-root") {
			t.Errorf("%s got MinIO's root credentials:\n%s", c.who, c.env)
		}
	}
	if d.Access.Worker.AccessKey == d.Access.Producer.AccessKey || d.WorkerPID != d.PID("worker") || d.WorkerPID == 0 {
		t.Errorf("users %+v, worker pid %d", d.Access, d.WorkerPID)
	}
	if p, err := jobs.LoadEgressConfig(d.EgressConfig); err != nil || len(p.Queues["default"].Max) == 0 {
		t.Errorf("egress policy %+v, %v", p, err)
	}
	auth, err := api.LoadAuthConfig(d.AuthConfig)
	if err != nil || len(auth.Tokens) != 1 || auth.Tokens[0].SHA256 != api.HashToken(d.Token) {
		t.Errorf("auth config %+v, %v; token %q", auth, err, d.Token)
	}
	pids := []int{d.PID("worker"), d.PID("server"), d.PID("redis"), d.PID("minio")}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("pid %d still runs after Stop", pid)
		}
	}
}

// Settings files given are used as they are, and nothing is written in
// their place; a server off loopback keeps its dashboard closed.
func TestStartUsesTheSettingsGiven(t *testing.T) {
	dir := t.TempDir()
	d := &Dev{Dir: dir, EgressConfig: "/etc/e.json", WebhookConfig: "/etc/w.json", AuthConfig: "/etc/a.json"}
	if err := d.writeSettings("0.0.0.0:8080"); err != nil {
		t.Fatal(err)
	}
	if d.WroteEgress || d.WroteWebhookConfig || d.WroteAuthConfig || d.OpenDashboard || d.EgressConfig != "/etc/e.json" {
		t.Errorf("%+v", d)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("wrote %v", entries)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "localhost:1": true, "[::1]:1": true, "0.0.0.0:1": false, ":8080": false, "10.0.0.1:1": false, "bad": false} {
		if Loopback(addr) != want {
			t.Errorf("Loopback(%q) = %v", addr, !want)
		}
	}
}
