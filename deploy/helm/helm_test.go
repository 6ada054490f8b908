// Package helm_test checks the Helm chart in sandq/: helm lint, and helm
// template for each combination of values the docs describe, its output
// decoded strictly into the Kubernetes API types (an unknown or misspelt
// field fails), then checked for what the processes need. The Kubernetes
// modules are imported only here, by tests.
package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/sandq/sandq/internal/bytesize"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

const chart = "sandq"

// baseValues is the least a release needs: a Redis, a store and each
// role's S3 user. Every case starts from it.
const baseValues = `
redis:
  url: redis://redis.sandq.svc:6379/0
  password: redis-secret
s3:
  endpoint: s3.sandq.svc:9000
  worker: {accessKey: sandq-worker, secretKey: worker-secret}
  api: {accessKey: sandq-api, secretKey: api-secret}
`

// serviceMonitor is the part of the Prometheus Operator's CRD
// (monitoring.coreos.com/v1) the chart writes; decoding into it strictly
// catches a field the chart misspells or the CRD lacks.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path,omitempty"`
			Interval string `json:"interval,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// fleet is one rendering of the chart, each object decoded into its type.
type fleet struct {
	secrets         map[string]*corev1.Secret
	configMaps      map[string]*corev1.ConfigMap
	services        map[string]*corev1.Service
	deployments     map[string]*appsv1.Deployment
	daemonSets      map[string]*appsv1.DaemonSet
	pdbs            map[string]*policyv1.PodDisruptionBudget
	serviceMonitors map[string]*serviceMonitor
}

// helm runs the helm binary; the full tier fails without it.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	testenv.NeedBinary(t, "helm")
	cmd := exec.Command("helm", args...)
	// A home of its own: no repositories, plugins or cache of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// valuesFile writes baseValues and then each of more as values files, in
// order (later ones win, as helm merges them), and returns the -f flags.
func valuesFiles(t *testing.T, more ...string) []string {
	t.Helper()
	var args []string
	for i, v := range append([]string{baseValues}, more...) {
		f := filepath.Join(t.TempDir(), fmt.Sprintf("values-%d.yaml", i))
		if err := os.WriteFile(f, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", f)
	}
	return args
}

// template renders the chart with the values given after baseValues.
func template(t *testing.T, more ...string) (string, error) {
	t.Helper()
	return helm(t, append([]string{"template", "sq", chart, "--namespace", "sandq"}, valuesFiles(t, more...)...)...)
}

// render renders the chart and decodes what it wrote, failing t on any error.
func render(t *testing.T, more ...string) *fleet {
	t.Helper()
	out, err := template(t, more...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	f, err := decode(out)
	if err != nil {
		t.Fatalf("decoding helm template's output: %v", err)
	}
	return f
}

// strict decodes one manifest's JSON into v, refusing a field v's type
// does not have.
func strict(doc []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

// docSep splits a YAML stream into its documents.
var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decode reads helm template's output: each document converted to JSON
// (a key given twice is an error), then decoded strictly into the type its
// apiVersion and kind name. A kind the chart is not known to write is an
// error, as is a name or label the API server would refuse.
func decode(out string) (*fleet, error) {
	f := &fleet{
		secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, deployments: map[string]*appsv1.Deployment{},
		daemonSets: map[string]*appsv1.DaemonSet{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		serviceMonitors: map[string]*serviceMonitor{},
	}
	for _, doc := range docSep.Split(out, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("%w in\n%s", err, doc)
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, err
		}
		var obj any
		var meta *metav1.ObjectMeta
		var put func()
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/Secret":
			o := &corev1.Secret{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.secrets[o.Name] = o }
		case "v1/ConfigMap":
			o := &corev1.ConfigMap{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.configMaps[o.Name] = o }
		case "v1/Service":
			o := &corev1.Service{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.services[o.Name] = o }
		case "apps/v1/Deployment":
			o := &appsv1.Deployment{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.deployments[o.Name] = o }
		case "apps/v1/DaemonSet":
			o := &appsv1.DaemonSet{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.daemonSets[o.Name] = o }
		case "policy/v1/PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.pdbs[o.Name] = o }
		case "monitoring.coreos.com/v1/ServiceMonitor":
			o := &serviceMonitor{}
			obj, meta = o, &o.ObjectMeta
			put = func() { f.serviceMonitors[o.Name] = o }
		default:
			return nil, fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
		}
		if err := strict(js, obj); err != nil {
			return nil, fmt.Errorf("%s: %w", tm.Kind, err)
		}
		if err := checkMeta(tm.Kind, meta); err != nil {
			return nil, err
		}
		put()
	}
	return f, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// checkMeta applies the API server's rules for names and labels.
func checkMeta(kind string, m *metav1.ObjectMeta) error {
	if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
		return fmt.Errorf("%s name %q: %s", kind, m.Name, strings.Join(errs, "; "))
	}
	for k, v := range m.Labels {
		if errs := append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...); len(errs) > 0 {
			return fmt.Errorf("%s %s label %s=%q: %s", kind, m.Name, k, v, strings.Join(errs, "; "))
		}
	}
	return nil
}

// TestStrictDecodeRefusesTypos shows the decoder biting: a field
// misspelt, a field in the wrong place, a key given twice and a kind the
// chart does not write each fail.
func TestStrictDecodeRefusesTypos(t *testing.T) {
	good := `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: w}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      terminationGracePeriodSeconds: 90
      containers: [{name: w, image: sandq}]
`
	if _, err := decode(good); err != nil {
		t.Fatalf("a valid DaemonSet was refused: %v", err)
	}
	for name, doc := range map[string]string{
		"misspelt field":  strings.Replace(good, "terminationGracePeriodSeconds", "terminationGracePeriodSecond", 1),
		"misplaced field": strings.Replace(good, "      containers:", "      privileged: true\n      containers:", 1),
		"key twice":       strings.Replace(good, "metadata: {name: w}", "metadata: {name: w, name: v}", 1),
		"unknown kind":    strings.Replace(good, "kind: DaemonSet", "kind: DeamonSet", 1),
		"bad name":        strings.Replace(good, "metadata: {name: w}", "metadata: {name: W_1}", 1),
		"bad label":       strings.Replace(good, "metadata: {name: w}", "metadata: {name: w, labels: {a: 'b c'}}", 1),
	} {
		if _, err := decode(doc); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// TestChartDashboardsMatchRepository: the chart carries a copy of the
// repository's dashboards (helm reads only files inside the chart); the
// copy must be the same, file for file.
func TestChartDashboardsMatchRepository(t *testing.T) {
	repo, err := filepath.Glob("../../dashboards/grafana/dashboards/*.json")
	if err != nil || len(repo) == 0 {
		t.Fatalf("no dashboards in the repository: %v", err)
	}
	copies, _ := filepath.Glob(filepath.Join(chart, "dashboards", "*.json"))
	if len(copies) != len(repo) {
		t.Errorf("chart has %d dashboards, the repository %d: copy dashboards/grafana/dashboards/*.json into %s/dashboards/", len(copies), len(repo), chart)
	}
	for _, src := range repo {
		want, _ := os.ReadFile(src)
		got, err := os.ReadFile(filepath.Join(chart, "dashboards", filepath.Base(src)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s/dashboards/%s differs from %s: copy it again", chart, filepath.Base(src), src)
		}
	}
}

// TestHelmLint: helm lint --strict passes with the least values a release
// needs. (Helm 4's lint logs the chart's fail calls instead of failing, so
// the refusals are checked with helm template, in TestTemplateRefusals.)
func TestHelmLint(t *testing.T) {
	out, err := helm(t, append([]string{"lint", "--strict", chart}, valuesFiles(t)...)...)
	if err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
		t.Errorf("helm lint did not say the chart passed:\n%s", out)
	}
}

// env returns a container's variables: their values, or "secret:NAME/KEY"
// for one taken from a Secret.
func env(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			m[e.Name] = "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		default:
			m[e.Name] = e.Value
		}
	}
	return m
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func (f *fleet) worker(t *testing.T) (*appsv1.DaemonSet, corev1.Container) {
	t.Helper()
	ds := f.daemonSets["sq-sandq-worker"]
	if ds == nil {
		t.Fatalf("no worker DaemonSet; have %v", keys(f.daemonSets))
	}
	return ds, container(t, ds.Spec.Template.Spec, "worker")
}

func (f *fleet) api(t *testing.T) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	d := f.deployments["sq-sandq-api"]
	if d == nil {
		t.Fatalf("no API Deployment; have %v", keys(f.deployments))
	}
	return d, container(t, d.Spec.Template.Spec, "api")
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// fileVars are the variables that name a file a process reads.
var fileVars = regexp.MustCompile(`^SANDQ_(.*_CONFIG|.*_FILE|RUNSC)$`)

// checkFiles: every file a variable names is where a mount puts it, from a
// volume that has it (a ConfigMap's or Secret's item of that name, the key
// present in the ConfigMap or Secret when the chart makes it; or a host
// file).
func checkFiles(t *testing.T, f *fleet, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for name, file := range env(c) {
		if !fileVars.MatchString(name) {
			continue
		}
		var found, onMount bool
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				t.Errorf("%s: mount %s has no volume", c.Name, m.Name)
				continue
			}
			switch {
			case v.HostPath != nil && file == m.MountPath:
				found = v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathFile
			case path.Dir(file) == m.MountPath:
				rel := path.Base(file)
				switch {
				case v.ConfigMap != nil:
					found = hasItem(v.ConfigMap.Items, rel)
					if cm := f.configMaps[v.ConfigMap.Name]; cm != nil {
						found = found && cm.Data[itemKey(v.ConfigMap.Items, rel)] != ""
					}
				case v.Secret != nil:
					found = hasItem(v.Secret.Items, rel)
					if s := f.secrets[v.Secret.SecretName]; s != nil {
						found = found && s.StringData[itemKey(v.Secret.Items, rel)] != ""
					}
				}
			default:
				continue
			}
			onMount = true
			if !found {
				t.Errorf("%s: %s=%s: mount %s does not provide it", c.Name, name, file, m.Name)
			}
			break
		}
		if !onMount {
			t.Errorf("%s: %s=%s is on no mount", c.Name, name, file)
		}
	}
}

func hasItem(items []corev1.KeyToPath, p string) bool { return itemKey(items, p) != "" }

func itemKey(items []corev1.KeyToPath, p string) string {
	for _, it := range items {
		if it.Path == p {
			return it.Key
		}
	}
	return ""
}

// checkSecretRefs: every key a container takes from a Secret the chart
// makes is in it, and only the keys of its role are taken.
func checkSecretRefs(t *testing.T, f *fleet, c corev1.Container, role string) {
	t.Helper()
	other := map[string]string{"worker": "s3-api-", "api": "s3-worker-"}[role]
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		if strings.HasPrefix(ref.Key, other) {
			t.Errorf("%s takes %s, another role's key", c.Name, ref.Key)
		}
		if s := f.secrets[ref.Name]; s != nil && s.StringData[ref.Key] == "" {
			t.Errorf("%s: %s: Secret %s has no key %s", c.Name, e.Name, ref.Name, ref.Key)
		}
	}
	if len(c.EnvFrom) > 0 {
		t.Errorf("%s takes whole Secrets or ConfigMaps (envFrom)", c.Name)
	}
}

// docsText is docs/configuration.md, where every SANDQ_ variable is listed.
func docsText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkVarsReal: every SANDQ_ variable the chart sets is one sandq reads
// (the reference lists them all; cmd/sandq's docs test keeps it whole).
func checkVarsReal(t *testing.T, c corev1.Container) {
	t.Helper()
	docs := docsText(t)
	for name := range env(c) {
		if !regexp.MustCompile("`" + name + "`").MatchString(docs) {
			t.Errorf("%s: %s is not a variable sandq reads (not in docs/configuration.md)", c.Name, name)
		}
	}
}

// checkSelects: sel picks the pods of the template and not those of other.
func checkSelects(t *testing.T, what string, sel *metav1.LabelSelector, pods, other map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if s.Empty() || !s.Matches(labels.Set(pods)) {
		t.Errorf("%s: selector %v does not match its pods' labels %v", what, s, pods)
	}
	if other != nil && s.Matches(labels.Set(other)) {
		t.Errorf("%s: selector %v also matches the other component's pods %v", what, s, other)
	}
}

func mustSize(t *testing.T, what, s string) int64 {
	t.Helper()
	n, err := bytesize.Parse(s)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return n
}

// checkWorker asserts what a worker pod needs to run jobs.
func checkWorker(t *testing.T, f *fleet) {
	t.Helper()
	ds, c := f.worker(t)
	spec := ds.Spec.Template.Spec
	e := env(c)

	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the worker is not privileged: runsc, mounts, cgroups and network namespaces need it")
	} else if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("the worker does not run as root")
	}
	if len(spec.NodeSelector) == 0 {
		t.Error("the worker has no node selector: it would land on nodes without runsc or images")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the worker pod mounts a service account token next to untrusted code")
	}

	// The state and the images are on the node, where the flags point.
	hostMounts := map[string]string{}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if v := vols[m.Name]; v.HostPath != nil {
			hostMounts[m.MountPath] = v.HostPath.Path
		}
	}
	for _, dir := range []string{"SANDQ_STATE_DIR", "SANDQ_IMAGE_DIR"} {
		if e[dir] == "" || hostMounts[e[dir]] == "" {
			t.Errorf("%s=%q is not a host path mount (mounts: %v)", dir, e[dir], hostMounts)
		}
	}
	if e["SANDQ_RUNSC"] != "" && hostMounts[e["SANDQ_RUNSC"]] == "" {
		t.Errorf("SANDQ_RUNSC=%s is not the node's runsc", e["SANDQ_RUNSC"])
	}

	// The pod outlives the shutdown grace its jobs get.
	grace, err := time.ParseDuration(e["SANDQ_SHUTDOWN_GRACE"])
	if err != nil {
		t.Fatalf("SANDQ_SHUTDOWN_GRACE: %v", err)
	}
	if tg := spec.TerminationGracePeriodSeconds; tg == nil {
		t.Error("no terminationGracePeriodSeconds")
	} else if time.Duration(*tg)*time.Second <= grace {
		t.Errorf("terminationGracePeriodSeconds %d is not longer than the shutdown grace %v", *tg, grace)
	}

	// The pod asks for the memory its jobs may use, and more.
	budget := mustSize(t, "SANDQ_MEMORY_BUDGET", e["SANDQ_MEMORY_BUDGET"])
	req, ok := c.Resources.Requests[corev1.ResourceMemory]
	if !ok || req.Value() <= budget {
		t.Errorf("memory request %v is not above the memory budget %d", req.String(), budget)
	}
	if max := mustSize(t, "SANDQ_MAX_MEMORY", e["SANDQ_MAX_MEMORY"]); max > budget {
		t.Errorf("SANDQ_MAX_MEMORY %d over the budget %d: the worker refuses to start", max, budget)
	}

	for _, want := range []string{"SANDQ_REDIS_URL", "SANDQ_S3_ENDPOINT", "SANDQ_S3_BUCKET", "SANDQ_EGRESS_CONFIG", "SANDQ_METRICS_ADDR"} {
		if e[want] == "" {
			t.Errorf("the worker has no %s", want)
		}
	}
	if !strings.HasPrefix(e["SANDQ_S3_ACCESS_KEY"], "secret:") || !strings.HasSuffix(e["SANDQ_S3_ACCESS_KEY"], "/s3-worker-access-key") ||
		!strings.HasSuffix(e["SANDQ_S3_SECRET_KEY"], "/s3-worker-secret-key") {
		t.Errorf("the worker's S3 credentials are not its own from a Secret: %q %q", e["SANDQ_S3_ACCESS_KEY"], e["SANDQ_S3_SECRET_KEY"])
	}
	if strings.HasPrefix(e["SANDQ_METRICS_ADDR"], "127.") {
		t.Errorf("SANDQ_METRICS_ADDR %s: Prometheus cannot reach loopback", e["SANDQ_METRICS_ADDR"])
	}
	checkFiles(t, f, spec, c)
	checkSecretRefs(t, f, c, "worker")
	checkVarsReal(t, c)
	checkPorts(t, f, "sq-sandq-worker", c)
}

// checkAPI asserts what the API pods need.
func checkAPI(t *testing.T, f *fleet) {
	t.Helper()
	d, c := f.api(t)
	e := env(c)
	if sc := c.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) {
		t.Error("the API server runs privileged")
	}
	if l := e["SANDQ_LISTEN"]; !strings.HasPrefix(l, "0.0.0.0:") {
		t.Errorf("SANDQ_LISTEN=%q: not reachable through its Service", l)
	}
	// A non-loopback --listen needs --auth-config, or serve refuses to start.
	if e["SANDQ_AUTH_CONFIG"] == "" {
		t.Error("the API server has no SANDQ_AUTH_CONFIG")
	}
	if !strings.HasSuffix(e["SANDQ_S3_ACCESS_KEY"], "/s3-api-access-key") || !strings.HasSuffix(e["SANDQ_S3_SECRET_KEY"], "/s3-api-secret-key") {
		t.Errorf("the API's S3 credentials are not its own from a Secret: %q %q", e["SANDQ_S3_ACCESS_KEY"], e["SANDQ_S3_SECRET_KEY"])
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Error("the API's readiness is not /healthz")
	}
	checkFiles(t, f, d.Spec.Template.Spec, c)
	checkSecretRefs(t, f, c, "api")
	checkVarsReal(t, c)
	checkPorts(t, f, "sq-sandq-api", c)
}

// checkPorts: the Service named selects the container's pods and its
// target ports are ports the container declares.
func checkPorts(t *testing.T, f *fleet, svcName string, c corev1.Container) {
	t.Helper()
	svc := f.services[svcName]
	if svc == nil {
		t.Fatalf("no Service %s; have %v", svcName, keys(f.services))
	}
	named := map[string]bool{}
	for _, p := range c.Ports {
		named[p.Name] = true
	}
	for _, p := range svc.Spec.Ports {
		if !named[p.TargetPort.String()] {
			t.Errorf("Service %s targets port %s, which container %s does not have", svcName, p.TargetPort.String(), c.Name)
		}
	}
}

// checkSelectors: each workload selects its own template; each budget and
// Service selects its component's pods and not the other's.
func checkSelectors(t *testing.T, f *fleet) {
	t.Helper()
	var apiPods, workerPods map[string]string
	if d := f.deployments["sq-sandq-api"]; d != nil {
		apiPods = d.Spec.Template.Labels
		checkSelects(t, "API Deployment", d.Spec.Selector, apiPods, nil)
	}
	if ds := f.daemonSets["sq-sandq-worker"]; ds != nil {
		workerPods = ds.Spec.Template.Labels
		checkSelects(t, "worker DaemonSet", ds.Spec.Selector, workerPods, nil)
	}
	for name, pdb := range f.pdbs {
		pods, other := apiPods, workerPods
		if strings.HasSuffix(name, "-worker") {
			pods, other = workerPods, apiPods
		}
		if pods == nil {
			t.Errorf("PodDisruptionBudget %s guards pods the chart does not make", name)
			continue
		}
		checkSelects(t, "PodDisruptionBudget "+name, pdb.Spec.Selector, pods, other)
	}
	for name, svc := range f.services {
		pods, other := apiPods, workerPods
		if strings.HasSuffix(name, "-worker") {
			pods, other = workerPods, apiPods
		}
		checkSelects(t, "Service "+name, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, pods, other)
	}
}

func TestTemplateDefault(t *testing.T) {
	f := render(t)
	checkWorker(t, f)
	checkAPI(t, f)
	checkSelectors(t, f)
	for _, name := range []string{"sq-sandq-api", "sq-sandq-worker"} {
		if f.pdbs[name] == nil {
			t.Errorf("no PodDisruptionBudget %s", name)
		}
	}
	if pdb := f.pdbs["sq-sandq-api"]; pdb != nil {
		d, _ := f.api(t)
		if pdb.Spec.MinAvailable == nil || int32(pdb.Spec.MinAvailable.IntValue()) >= *d.Spec.Replicas {
			t.Errorf("the API's budget (minAvailable %v) leaves no replica to evict of %d", pdb.Spec.MinAvailable, *d.Spec.Replicas)
		}
	}
	if len(f.serviceMonitors) != 0 || f.configMaps["sq-sandq-dashboards"] != nil {
		t.Error("a ServiceMonitor or the dashboards are made by default")
	}
	// No webhook settings given: none mounted, no variable pointing at one.
	if _, c := f.worker(t); env(c)["SANDQ_WEBHOOK_CONFIG"] != "" {
		t.Error("SANDQ_WEBHOOK_CONFIG set without webhook settings")
	}

	// The worker and the API server apply the same limits.
	_, w := f.worker(t)
	_, a := f.api(t)
	we, ae := env(w), env(a)
	for name, v := range ae {
		if regexp.MustCompile(`^SANDQ_(DEFAULT|MAX)_|^SANDQ_(RESULT_RETENTION|LINK_EXPIRY|REDIS_URL|S3_BUCKET|S3_ENDPOINT|QUEUE)$`).MatchString(name) && we[name] != v {
			t.Errorf("%s: API %q, worker %q", name, v, we[name])
		}
	}

	checkLimitsAreSandqDefaults(t, "API", ae)
	checkLimitsAreSandqDefaults(t, "worker", we)

	// The configs are the documented defaults, as JSON sandq reads.
	var egress struct {
		Queues map[string]struct{ Max, Default []string }
	}
	if err := json.Unmarshal([]byte(f.configMaps["sq-sandq-egress"].Data["egress.json"]), &egress); err != nil || len(egress.Queues["default"].Max) == 0 {
		t.Errorf("egress.json: %v %+v", err, egress)
	}
	var auth struct {
		Tenants map[string]json.RawMessage
	}
	if err := json.Unmarshal([]byte(f.configMaps["sq-sandq-auth"].Data["auth.json"]), &auth); err != nil || auth.Tenants["ops"] == nil {
		t.Errorf("auth.json: %v %+v", err, auth)
	}
	s := f.secrets["sq-sandq-credentials"]
	if s == nil || s.StringData["redis-password"] != "redis-secret" || s.StringData["s3-worker-secret-key"] != "worker-secret" {
		t.Errorf("the credentials Secret lacks the values given: %+v", s)
	}
}

// checkLimitsAreSandqDefaults checks that the chart's limits, which it
// always sets, are sandq's own defaults (jobs/defaults.go) as the CLI
// parses them, so that a default changed in one place and not the other
// fails here. maxCpus is the documented exception (docs/kubernetes.md):
// sandq's default is the host's CPUs, which the API server cannot see.
// A limit the chart renders and this does not know fails too.
func checkLimitsAreSandqDefaults(t *testing.T, who string, e map[string]string) {
	t.Helper()
	dur := func(v string) (any, error) { return time.ParseDuration(v) }
	size := func(v string) (any, error) { return jobs.ParseSize(v) }
	cpus := func(v string) (any, error) { return jobs.ParseCPUs(v) }
	count := func(v string) (any, error) { return strconv.Atoi(v) }
	want := map[string]struct {
		parse func(string) (any, error)
		def   any
	}{
		"SANDQ_DEFAULT_TIMEOUT":  {dur, jobs.DefaultTimeout},
		"SANDQ_MAX_TIMEOUT":      {dur, jobs.DefaultMaxTimeout},
		"SANDQ_DEFAULT_MEMORY":   {size, int64(jobs.DefaultMemory)},
		"SANDQ_MAX_MEMORY":       {size, int64(jobs.DefaultMaxMemory)},
		"SANDQ_DEFAULT_DISK":     {size, int64(jobs.DefaultDisk)},
		"SANDQ_MAX_DISK":         {size, int64(jobs.DefaultMaxDisk)},
		"SANDQ_DEFAULT_CPUS":     {cpus, jobs.DefaultCPUs},
		"SANDQ_MAX_CPUS":         {cpus, 4.0}, // the chart's own: docs/kubernetes.md
		"SANDQ_MAX_RETRY":        {count, jobs.DefaultMaxRetry},
		"SANDQ_RESULT_RETENTION": {dur, jobs.DefaultResultRetention},
		"SANDQ_LINK_EXPIRY":      {dur, jobs.DefaultLinkExpiry},
	}
	for name, w := range want {
		v, ok := e[name]
		if !ok {
			t.Errorf("%s: %s not set", who, name)
			continue
		}
		if got, err := w.parse(v); err != nil {
			t.Errorf("%s: %s=%q: %v", who, name, v, err)
		} else if got != w.def {
			t.Errorf("%s: %s=%q is %v, not the default %v (jobs/defaults.go; maxCpus: docs/kubernetes.md)", who, name, v, got, w.def)
		}
	}
	for name := range e {
		if _, ok := want[name]; !ok && regexp.MustCompile(`^SANDQ_(DEFAULT|MAX)_|^SANDQ_(RESULT_RETENTION|LINK_EXPIRY)$`).MatchString(name) {
			t.Errorf("%s: %s is rendered, and this test does not check it against sandq's default", who, name)
		}
	}
}

func TestTemplateSentinel(t *testing.T) {
	const url = "redis+sentinel://s1.redis:26379,s2.redis:26379,s3.redis:26379/sandq"
	f := render(t, `
redis:
  url: `+url+`
  sentinelPassword: sentinel-secret
  waitReplicas: 1
`)
	checkWorker(t, f)
	checkAPI(t, f)
	checkSelectors(t, f)
	for _, c := range []corev1.Container{container(t, f.daemonSets["sq-sandq-worker"].Spec.Template.Spec, "worker"), container(t, f.deployments["sq-sandq-api"].Spec.Template.Spec, "api")} {
		e := env(c)
		if e["SANDQ_REDIS_URL"] != url || e["SANDQ_REDIS_WAIT_REPLICAS"] != "1" ||
			e["SANDQ_REDIS_SENTINEL_PASSWORD"] != "secret:sq-sandq-credentials/redis-sentinel-password" ||
			e["SANDQ_REDIS_PASSWORD"] != "secret:sq-sandq-credentials/redis-password" {
			t.Errorf("%s: Sentinel settings not passed: %v", c.Name, e)
		}
	}
	if f.secrets["sq-sandq-credentials"].StringData["redis-sentinel-password"] != "sentinel-secret" {
		t.Error("the Sentinels' password is not in the Secret")
	}
}

func TestTemplateTLSRedis(t *testing.T) {
	f := render(t, `
redis:
  url: rediss://redis.example:6380
  tls: {existingSecret: redis-client-tls, clientCertificate: true}
`)
	checkWorker(t, f)
	checkAPI(t, f)
	for _, pod := range []corev1.PodSpec{f.daemonSets["sq-sandq-worker"].Spec.Template.Spec, f.deployments["sq-sandq-api"].Spec.Template.Spec} {
		c := pod.Containers[0]
		e := env(c)
		for _, v := range []string{"SANDQ_REDIS_CA_FILE", "SANDQ_REDIS_CERT_FILE", "SANDQ_REDIS_KEY_FILE"} {
			if e[v] == "" {
				t.Errorf("%s: no %s", c.Name, v)
			}
		}
		// checkWorker and checkAPI found the files on a mount; it must be
		// the named Secret.
		var fromSecret bool
		for _, v := range pod.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "redis-client-tls" && hasItem(v.Secret.Items, "ca.crt") && hasItem(v.Secret.Items, "tls.key") {
				fromSecret = true
			}
		}
		if !fromSecret {
			t.Errorf("%s: the certificates are not from Secret redis-client-tls", c.Name)
		}
	}
	// Without a client certificate, only the CA is mounted and named.
	f = render(t, `
redis:
  url: rediss://redis.example:6380
  tls: {existingSecret: redis-ca}
`)
	_, c := f.worker(t)
	if e := env(c); e["SANDQ_REDIS_CA_FILE"] == "" || e["SANDQ_REDIS_CERT_FILE"] != "" {
		t.Errorf("CA only: %v", e)
	}
	checkWorker(t, f)
}

func TestTemplateNoAPI(t *testing.T) {
	f := render(t, `
api: {enabled: false}
s3: {api: {accessKey: "", secretKey: ""}}
metrics: {serviceMonitor: {enabled: true}}
`)
	checkWorker(t, f)
	checkSelectors(t, f)
	if len(f.deployments) != 0 || f.services["sq-sandq-api"] != nil || f.pdbs["sq-sandq-api"] != nil || f.configMaps["sq-sandq-auth"] != nil {
		t.Errorf("API objects rendered with api.enabled=false: %v %v %v %v", keys(f.deployments), keys(f.services), keys(f.pdbs), keys(f.configMaps))
	}
	if s := f.secrets["sq-sandq-credentials"]; s.StringData["s3-api-access-key"] != "" {
		t.Error("the API's S3 keys are in the Secret without an API")
	}
	for _, sm := range f.serviceMonitors {
		for _, ep := range sm.Spec.Endpoints {
			if ep.Port == "http" {
				t.Error("the ServiceMonitor scrapes the API, which is not there")
			}
		}
	}
}

func TestTemplateServiceMonitorAndDashboards(t *testing.T) {
	f := render(t, `
metrics:
  serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}}
grafana:
  dashboards: {enabled: true}
`)
	checkWorker(t, f)
	checkAPI(t, f)
	sm := f.serviceMonitors["sq-sandq"]
	if sm == nil {
		t.Fatalf("no ServiceMonitor; have %v", keys(f.serviceMonitors))
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v lack the one given", sm.Labels)
	}
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	// Each endpoint's port is on a Service the monitor selects, and both
	// the API and the workers are scraped.
	scraped := map[string]bool{}
	for _, ep := range sm.Spec.Endpoints {
		for name, svc := range f.services {
			if !sel.Matches(labels.Set(svc.Labels)) {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.Name == ep.Port {
					scraped[name] = true
				}
			}
		}
	}
	if !scraped["sq-sandq-api"] || !scraped["sq-sandq-worker"] {
		t.Errorf("ServiceMonitor scrapes %v, not both the API and the workers", scraped)
	}
	if ns := sm.Spec.NamespaceSelector.MatchNames; len(ns) != 1 || ns[0] != "sandq" {
		t.Errorf("ServiceMonitor looks in namespaces %v, not the release's", ns)
	}

	cm := f.configMaps["sq-sandq-dashboards"]
	if cm == nil {
		t.Fatalf("no dashboards ConfigMap; have %v", keys(f.configMaps))
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboards ConfigMap labels %v lack grafana_dashboard", cm.Labels)
	}
	repo, _ := filepath.Glob("../../dashboards/grafana/dashboards/*.json")
	if len(cm.Data) != len(repo) || len(repo) == 0 {
		t.Errorf("dashboards ConfigMap has %v, the repository %v", keys(cm.Data), repo)
	}
	for _, src := range repo {
		want, _ := os.ReadFile(src)
		got := cm.Data[filepath.Base(src)]
		if !json.Valid([]byte(got)) || strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("dashboard %s in the ConfigMap differs from the repository's", filepath.Base(src))
		}
	}
}

func TestTemplateExistingSecrets(t *testing.T) {
	f := render(t, `
redis: {password: "", sentinelPassword: ""}
s3: {worker: {accessKey: "", secretKey: ""}, api: {accessKey: "", secretKey: ""}}
credentials: {existingSecret: sandq-creds}
webhook: {existingSecret: sandq-webhooks}
auth: {existingConfigMap: sandq-auth}
egress: {existingConfigMap: sandq-egress}
`)
	checkWorker(t, f)
	checkAPI(t, f)
	if len(f.secrets) != 0 {
		t.Errorf("the chart made Secrets %v beside the existing ones", keys(f.secrets))
	}
	if f.configMaps["sq-sandq-auth"] != nil || f.configMaps["sq-sandq-egress"] != nil {
		t.Errorf("the chart made config ConfigMaps beside the existing ones: %v", keys(f.configMaps))
	}
	ds, w := f.worker(t)
	we := env(w)
	if we["SANDQ_S3_SECRET_KEY"] != "secret:sandq-creds/s3-worker-secret-key" || we["SANDQ_WEBHOOK_CONFIG"] == "" {
		t.Errorf("the worker does not read the existing Secrets: %v", we)
	}
	// Redis may have no password: the key is optional in a Secret of one's
	// own, and required nowhere.
	for _, e := range w.Env {
		if e.Name == "SANDQ_REDIS_PASSWORD" && (e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional) {
			t.Error("redis-password is required of an existing Secret")
		}
		if e.Name == "SANDQ_S3_ACCESS_KEY" && e.ValueFrom.SecretKeyRef.Optional != nil && *e.ValueFrom.SecretKeyRef.Optional {
			t.Error("the S3 keys are optional")
		}
	}
	names := map[string]bool{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		switch {
		case v.Secret != nil:
			names[v.Secret.SecretName] = true
		case v.ConfigMap != nil:
			names[v.ConfigMap.Name] = true
		}
	}
	if !names["sandq-webhooks"] || !names["sandq-egress"] {
		t.Errorf("worker volumes %v do not mount the existing webhook Secret and egress ConfigMap", names)
	}
	d, _ := f.api(t)
	if v := d.Spec.Template.Spec.Volumes; v[0].ConfigMap == nil || v[0].ConfigMap.Name != "sandq-auth" {
		t.Errorf("the API does not mount the existing auth ConfigMap: %+v", v[0])
	}
}

func TestTemplateWebhookSettings(t *testing.T) {
	f := render(t, `
webhook:
  config:
    secrets: {"*": [whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=]}
    max_attempts: 5
`)
	checkWorker(t, f)
	s := f.secrets["sq-sandq-webhook"]
	if s == nil {
		t.Fatalf("no webhook Secret; have %v", keys(f.secrets))
	}
	var cfg struct {
		Secrets     map[string][]string `json:"secrets"`
		MaxAttempts int                 `json:"max_attempts"`
	}
	if err := json.Unmarshal([]byte(s.StringData["webhook.json"]), &cfg); err != nil || cfg.MaxAttempts != 5 || len(cfg.Secrets["*"]) != 1 {
		t.Errorf("webhook.json: %v %+v", err, cfg)
	}
	if f.configMaps["sq-sandq-webhook"] != nil {
		t.Error("the webhook signing secrets are in a ConfigMap")
	}
}

// TestTemplateRefusals: values that would make a fleet that cannot start
// are refused by helm template, with a message naming the value.
func TestTemplateRefusals(t *testing.T) {
	for _, c := range []struct{ name, values, want string }{
		{"no Redis", `redis: {url: ""}`, "redis.url is required"},
		{"not a Redis URL", `redis: {url: "http://redis:6379"}`, "the scheme must be"},
		{"password in the URL", `redis: {url: "redis://:hunter2@redis:6379"}`, "redis.url carries a password"},
		{"user and password in the URL", `redis: {url: "redis+sentinel://u:hunter2@s1:26379/sandq"}`, "redis.url carries a password"},
		{"wait with Cluster", "redis: {url: \"redis+cluster://n1:7000,n2:7000\", waitReplicas: 1}", "not available with Redis Cluster"},
		{"client certificate without a Secret", `redis: {tls: {clientCertificate: true}}`, "redis.tls.clientCertificate needs"},
		{"no S3 endpoint", `s3: {endpoint: ""}`, "s3.endpoint is required"},
		{"S3 endpoint with a scheme", `s3: {endpoint: "https://s3.example"}`, "without a scheme"},
		{"no worker S3 user", `s3: {worker: {secretKey: ""}}`, "s3.worker.accessKey and s3.worker.secretKey are required"},
		{"no API S3 user", `s3: {api: {accessKey: ""}}`, "s3.api.accessKey and s3.api.secretKey are required"},
		{"decimal unit", `worker: {memoryBudget: 12G}`, `worker.memoryBudget: "12G" is not a whole number`},
		{"fraction", `limits: {maxMemory: 1.5Gi}`, `limits.maxMemory: "1.5Gi"`},
		{"max over the budget", `worker: {memoryBudget: 6Gi}`, "limits.maxMemory 8Gi is over worker.memoryBudget 6Gi"},
		{"default over max", `limits: {defaultMemory: 9Gi}`, "limits.defaultMemory 9Gi is over limits.maxMemory"},
		{"grace as a duration", `worker: {shutdownGraceSeconds: 30s}`, "worker.shutdownGraceSeconds 30s"},
		{"no time after the grace", `worker: {terminationExtraSeconds: 0}`, "worker.terminationExtraSeconds 0"},
		{"budget blocking drains", `api: {replicas: 1}`, "api.pdb.minAvailable 1 is not less than api.replicas 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := template(t, c.values)
			if err == nil {
				t.Fatalf("rendered:\n%.400s", out)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("error does not say %q:\n%s", c.want, out)
			}
		})
	}
	// The same value with a binary unit renders: the refusal is the unit's.
	if out, err := template(t, `worker: {memoryBudget: 12288Mi}`); err != nil {
		t.Errorf("12288Mi refused: %v\n%s", err, out)
	}
}
