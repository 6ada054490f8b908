package helm_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
)

// pod runs one container of a rendered pod on this machine as the kubelet
// would start it, as far as sandq can tell: the sandq binary with the
// container's args and only its environment (PATH aside), each variable
// from a Secret read from the rendered Secret, and each volume made where
// the container would see it: ConfigMap and Secret items written to a
// directory, host paths used as they are, emptyDirs as temporary
// directories. Paths in the environment under a mount point are rewritten
// to where the volume is on this machine (a mount at /etc/sandq/auth is
// DIR/auth here).
func pod(t *testing.T, f *fleet, spec corev1.PodSpec, c corev1.Container, sandq string) *exec.Cmd {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	where := map[string]string{} // mount path in the container -> path here
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Fatalf("%s: mount %s has no volume", c.Name, m.Name)
		}
		switch {
		case v.HostPath != nil:
			where[m.MountPath] = v.HostPath.Path
		case v.EmptyDir != nil:
			where[m.MountPath] = t.TempDir()
		case v.ConfigMap != nil:
			cm := f.configMaps[v.ConfigMap.Name]
			if cm == nil {
				t.Fatalf("%s: volume %s: no ConfigMap %s rendered", c.Name, m.Name, v.ConfigMap.Name)
			}
			where[m.MountPath] = writeItems(t, v.ConfigMap.Items, cm.Data)
		case v.Secret != nil:
			s := f.secrets[v.Secret.SecretName]
			if s == nil {
				t.Fatalf("%s: volume %s: no Secret %s rendered", c.Name, m.Name, v.Secret.SecretName)
			}
			where[m.MountPath] = writeItems(t, v.Secret.Items, s.StringData)
		default:
			t.Fatalf("%s: volume %s is of a kind this test does not make", c.Name, m.Name)
		}
	}
	// The longest mount point first: /var/lib/sandq/images before
	// /var/lib/sandq.
	mounts := keys(where)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	local := func(p string) string {
		for _, m := range mounts {
			if p == m || strings.HasPrefix(p, m+"/") {
				return where[m] + strings.TrimPrefix(p, m)
			}
		}
		return p
	}
	envv := []string{"PATH=" + os.Getenv("PATH")}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			ref := e.ValueFrom.SecretKeyRef
			if ref == nil {
				t.Fatalf("%s: %s comes from neither a value nor a Secret", c.Name, e.Name)
			}
			s := f.secrets[ref.Name]
			if s == nil {
				t.Fatalf("%s: %s: no Secret %s rendered", c.Name, e.Name, ref.Name)
			}
			var ok bool
			if v, ok = s.StringData[ref.Key]; !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				t.Fatalf("%s: %s: Secret %s has no key %s", c.Name, e.Name, ref.Name, ref.Key)
			}
		}
		envv = append(envv, e.Name+"="+local(v))
	}
	cmd := exec.Command(sandq, c.Args...)
	cmd.Env = envv
	return cmd
}

func writeItems(t *testing.T, items []corev1.KeyToPath, data map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			t.Fatalf("no key %s to write as %s", it.Key, it.Path)
		}
		if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRenderedFleetRunsAJob: the API server and a worker started with
// exactly what the chart renders (their environment, their config files
// from the ConfigMaps and Secrets, the worker's host paths) against a real
// Redis and MinIO on this machine: the API takes a token from the auth
// ConfigMap, the worker runs a job submitted through the API in a real
// sandbox, and on SIGTERM the worker exits within the pod's termination
// grace. Once per way of reaching Redis: one server, TLS with a client
// certificate (from a Secret of the user's, as the chart expects it), and
// Sentinel with a password and replicated writes. What a cluster adds (the
// container runtime, the kubelet, the pod network) is not here; see
// docs/kubernetes.md.
func TestRenderedFleetRunsAJob(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedRunsc(t)
	testenv.NeedNetns(t)
	img := testenv.NeedImage(t)
	sandq := testenv.Sandq(t)
	t.Run("redis", func(t *testing.T) {
		// The Redis of testenv.Services.
		runFleet(t, sandq, img, func(stack *devstack.Stack) (string, map[string]*corev1.Secret) {
			return fmt.Sprintf(`redis: {url: "redis://%s/0", password: ""}`, stack.RedisAddr), nil
		})
	})
	t.Run("tls", func(t *testing.T) {
		addr, files := testenv.RedisTLS(t, testenv.RedisTLSOptions{RequireClientCert: true, Args: []string{"--maxmemory-policy", "noeviction"}})
		runFleet(t, sandq, img, func(*devstack.Stack) (string, map[string]*corev1.Secret) {
			data := map[string]string{}
			for key, file := range map[string]string{"ca.crt": files.CA, "tls.crt": files.ClientCert, "tls.key": files.ClientKey} {
				b, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				data[key] = string(b)
			}
			return fmt.Sprintf(`redis: {url: "rediss://%s", password: "", tls: {existingSecret: redis-client-tls, clientCertificate: true}}`, addr),
				map[string]*corev1.Secret{"redis-client-tls": {StringData: data}}
		})
	})
	t.Run("sentinel", func(t *testing.T) {
		set := testenv.StartSentinel(t, testenv.SentinelOptions{Password: "sentinel-data-secret"})
		runFleet(t, sandq, img, func(*devstack.Stack) (string, map[string]*corev1.Secret) {
			return fmt.Sprintf(`redis: {url: "redis+sentinel://%s/%s", password: %q, waitReplicas: 1}`,
				strings.Join(set.SentinelAddrs(), ","), set.MasterName, set.Password), nil
		})
	})
}

// runFleet renders the chart with the Redis values redis gives (and the
// Secrets of the user's it names), starts the API server and a worker
// from it, and runs a job through them.
func runFleet(t *testing.T, sandq string, img testenv.Image, redis func(*devstack.Stack) (string, map[string]*corev1.Secret)) {
	stack := testenv.Services(t, testenv.ServicesOptions{AccessKey: "sandq-root", SecretKey: "sandq-root-secret", AppendOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The expiry rule `sandq s3 setup` sets for the chart's retention
	// (168h) and link expiry (24h): 7 days, plus one.
	access, err := stack.ProvisionBucket(ctx, "sandq", devstack.ProvisionOptions{ExpiryDays: 8})
	if err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(sandq, "token", "create", "--tenant", "analytics", "--name", "helm-test", "--json").Output()
	if err != nil {
		t.Fatalf("sandq token create: %v", err)
	}
	var tok struct {
		Token string          `json:"token"`
		Entry json.RawMessage `json:"entry"`
	}
	if err := json.Unmarshal(out, &tok); err != nil || tok.Token == "" {
		t.Fatalf("sandq token create printed %s: %v", out, err)
	}
	apiPort, metricsPort := testenv.FreePort(t), testenv.FreePort(t)
	redisValues, userSecrets := redis(stack)
	f := render(t, redisValues, fmt.Sprintf(`
s3:
  endpoint: %s
  secure: false
  worker: {accessKey: %q, secretKey: %q}
  api: {accessKey: %q, secretKey: %q}
limits: {maxCpus: ""}
api: {port: %d}
auth:
  config:
    tenants:
      analytics: {queues: [default]}
    tokens: [%s]
worker:
  image: %s
  memoryBudget: 8Gi
  concurrency: "2"
  metricsPort: %d
  hostPaths: {state: %q, images: %q, runsc: /usr/local/bin/runsc}
`, stack.MinioAddr, access.Worker.AccessKey, access.Worker.SecretKey,
		access.Producer.AccessKey, access.Producer.SecretKey, apiPort, tok.Entry,
		img.Name, metricsPort, t.TempDir(), img.Dir))
	checkWorker(t, f)
	checkAPI(t, f)
	for name, secret := range userSecrets {
		f.secrets[name] = secret
	}

	d, apiC := f.api(t)
	api := testenv.Start(t, pod(t, f, d.Spec.Template.Spec, apiC, sandq), filepath.Join(t.TempDir(), "api.log"))
	base := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	waitFor(t, api, base+"/healthz")
	if code := get(t, base+"/v1/jobs", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/jobs without a token: %d, want 401", code)
	}
	if code := get(t, base+"/v1/jobs", tok.Token); code != http.StatusOK {
		t.Errorf("GET /v1/jobs with the token from the auth ConfigMap: %d, want 200\n%s", code, api.Output())
	}

	ds, workerC := f.worker(t)
	worker := testenv.Start(t, pod(t, f, ds.Spec.Template.Spec, workerC, sandq), filepath.Join(t.TempDir(), "worker.log"))
	waitFor(t, worker, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))

	script := filepath.Join(t.TempDir(), "job.sh")
	if err := os.WriteFile(script, []byte("echo rendered > /mnt/outputs/fleet.txt\necho done\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	enqueue := exec.CommandContext(ctx, sandq, "enqueue", script, "--wait", "--json", "--quiet")
	enqueue.Env = append(os.Environ(), "SANDQ_SERVER="+base, "SANDQ_TOKEN="+tok.Token)
	res, err := enqueue.Output()
	if err != nil {
		t.Fatalf("sandq enqueue --wait through the API: %v\n%s\nworker:\n%s\napi:\n%s", err, res, worker.Output(), api.Output())
	}
	var result struct {
		Status  string `json:"status"`
		Outputs []struct {
			Path string `json:"path"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(res, &result); err != nil || result.Status != "succeeded" || len(result.Outputs) != 1 || result.Outputs[0].Path != "fleet.txt" {
		t.Fatalf("result: %v\n%s\nworker:\n%s", err, res, worker.Output())
	}

	grace := time.Duration(*ds.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if !worker.Stop(grace) {
		t.Errorf("the worker did not exit within the pod's termination grace %v:\n%s", grace, worker.Output())
	}
	if !api.Stop(30 * time.Second) {
		t.Errorf("the API server did not exit on SIGTERM within 30s")
	}
}

// waitFor waits until url answers 200, or p exits.
func waitFor(t *testing.T, p *testenv.Process, url string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 in 2 minutes:\n%s", url, p.Output())
		}
		select {
		case <-p.Exited():
			t.Fatalf("exited (%v) before %s answered:\n%s", p.Err(), url, p.Output())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func get(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
