package jobs

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testEgress() EgressConfig {
	return EgressConfig{
		Groups: map[string][]string{"corp": {"*.corp.example", "api.partner.example"}, "docs": {"docs.corp.example"}},
		Queues: map[string]QueueEgress{
			"default": {Max: []string{"corp", "npm"}, Default: []string{"docs"}},
			"ports":   {Max: []string{"docs"}, Ports: []int{8443}},
		},
	}.WithDefaults()
}

func TestResolveNetwork(t *testing.T) {
	c := testEgress()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	npm := c.Groups["npm"]
	ok := []struct {
		queue string
		asked []string
		hosts string
		ports string
	}{
		{"default", []string{"docs"}, "docs.corp.example", "80,443"},
		{"default", []string{"default"}, "docs.corp.example", "80,443"},
		{"default", []string{"corp"}, "*.corp.example,api.partner.example", "80,443"},
		{"default", []string{"a.corp.example", "*.b.corp.example"}, "*.b.corp.example,a.corp.example", "80,443"},
		{"default", []string{"A.Corp.Example."}, "a.corp.example", "80,443"},
		{"default", []string{"npm"}, strings.Join(npm, ","), "80,443"},
		{"ports", []string{"docs"}, "docs.corp.example", "8443"},
	}
	for _, o := range ok {
		p, err := c.ResolveNetwork(o.queue, o.asked)
		if err != nil {
			t.Errorf("%s %v: %v", o.queue, o.asked, err)
			continue
		}
		ports := []string{}
		for _, x := range p.Ports {
			ports = append(ports, strconv.Itoa(x))
		}
		if strings.Join(p.Hosts, ",") != o.hosts || strings.Join(ports, ",") != o.ports {
			t.Errorf("%s %v: hosts %v ports %v, want %s / %s", o.queue, o.asked, p.Hosts, p.Ports, o.hosts, o.ports)
		}
	}
	for _, none := range [][]string{nil, {}, {"none"}} {
		if p, err := c.ResolveNetwork("default", none); p != nil || err != nil {
			t.Errorf("%v: %v %v, want no network", none, p, err)
		}
	}
	refused := []struct {
		queue string
		asked []string
		msg   string
	}{
		{"default", []string{"pypi"}, "group pypi"},
		{"default", []string{"corp.example"}, "host corp.example is not allowed"},
		{"default", []string{"*.example"}, `"*.example"`},
		{"default", []string{"*.other.example"}, "host *.other.example is not allowed"},
		{"default", []string{"evil-corp.example"}, "evil-corp.example"},
		{"default", []string{"corp.example.evil.test"}, "corp.example.evil.test"},
		{"default", []string{"nope"}, `unknown group "nope"`},
		{"default", []string{"none", "docs"}, "cannot be combined"},
		{"default", []string{"10.0.0.1"}, "10.0.0.1"},
		{"other", []string{"docs"}, `queue "other" allows no network`},
		{"ports", []string{"default"}, "no default network"},
	}
	for _, r := range refused {
		_, err := c.ResolveNetwork(r.queue, r.asked)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "network" || !strings.Contains(err.Error(), r.msg) {
			t.Errorf("%s %v: %v, want a network refusal containing %q", r.queue, r.asked, err, r.msg)
		}
	}
}

func TestEgressConfigValidate(t *testing.T) {
	bad := []struct {
		name string
		mod  func(*EgressConfig)
		msg  string
	}{
		{"default beyond max", func(c *EgressConfig) { c.Queues["x"] = QueueEgress{Max: []string{"docs"}, Default: []string{"corp"}} }, "not within its max"},
		{"bad pattern", func(c *EgressConfig) { c.Groups["bad"] = []string{"a.*.example"} }, "bad"},
		{"single-label glob", func(c *EgressConfig) { c.Groups["bad"] = []string{"*.com"} }, "two labels"},
		{"reserved group name", func(c *EgressConfig) { c.Groups["default"] = []string{"a.example"} }, "plain word"},
		{"bad port", func(c *EgressConfig) { c.Ports = []int{70000} }, "port"},
		{"negative max_conns", func(c *EgressConfig) { c.MaxConns = -1 }, "max_conns"},
		{"negative max_bytes", func(c *EgressConfig) { c.MaxBytes = -1 }, "max_bytes"},
		{"bad pool", func(c *EgressConfig) { c.Pool = "10.200.0.0" }, "pool"},
		{"unknown group in max", func(c *EgressConfig) { c.Queues["x"] = QueueEgress{Max: []string{"nope"}} }, "unknown group"},
	}
	for _, b := range bad {
		c := testEgress()
		b.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), b.msg) {
			t.Errorf("%s: %v, want an error containing %q", b.name, err, b.msg)
		}
	}
}

func TestBuiltinGroupsCanBeOverridden(t *testing.T) {
	c := EgressConfig{Groups: map[string][]string{"npm": {"npm.mirror.example"}}}.WithDefaults()
	if got := c.Groups["npm"]; len(got) != 1 || got[0] != "npm.mirror.example" {
		t.Errorf("npm group %v", got)
	}
	for _, g := range []string{"pypi", "github"} {
		if len(c.Groups[g]) == 0 {
			t.Errorf("built-in group %s is missing", g)
		}
	}
}

func TestLoadEgressConfig(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/good.json"
	os.WriteFile(good, []byte(`{"groups": {"g": ["a.example"]}, "queues": {"default": {"max": ["g"]}}, "idle_timeout": "30s", "total_timeout": "5m", "max_conns": 4}`), 0o644)
	c, err := LoadEgressConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.IdleTimeout != 30*time.Second || c.TotalTimeout != 5*time.Minute || c.MaxConns != 4 || c.Queues["default"].Max[0] != "g" {
		t.Errorf("loaded %+v", c)
	}
	for name, body := range map[string]string{
		"unknown field": `{"queue": {}}`,
		"bad duration":  `{"idle_timeout": "soon"}`,
		"not json":      `{`,
	} {
		p := dir + "/bad.json"
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := LoadEgressConfig(p); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}
