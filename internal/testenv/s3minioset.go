package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// MinioSetOptions say how to start a distributed MinIO.
type MinioSetOptions struct {
	// Host is the address every node binds to. Default DefaultS3Host.
	Host string
	// Nodes is how many minio server processes run, one drive each.
	// Default DefaultMinioNodes; at least MinMinioNodes.
	Nodes int
	// MinIO's root credentials. Default: "sandq-minio-root" and a random
	// secret.
	AccessKey, SecretKey string
}

// DefaultMinioNodes is MinioSetOptions.Nodes' default: 4 drives, MinIO's
// default parity of 2, so a set survives one node lost with writes and two
// with reads.
const DefaultMinioNodes = 4

// MinMinioNodes is the fewest nodes of an erasure-coded set.
const MinMinioNodes = 2

// minioStopTimeout is how long a node gets to exit after SIGTERM.
const minioStopTimeout = 15 * time.Second

func (o MinioSetOptions) withDefaults(t testing.TB) MinioSetOptions {
	if o.Host == "" {
		o.Host = DefaultS3Host
	}
	if o.Nodes == 0 {
		o.Nodes = DefaultMinioNodes
	}
	if o.AccessKey == "" {
		o.AccessKey = "sandq-minio-root"
	}
	if o.SecretKey == "" {
		o.SecretKey = randomSecret(t)
	}
	return o
}

func (o MinioSetOptions) validate() error {
	if o.Nodes < MinMinioNodes {
		return fmt.Errorf("MinioSetOptions.Nodes %d: an erasure-coded set needs at least %d nodes", o.Nodes, MinMinioNodes)
	}
	if len(o.AccessKey) < 3 || len(o.SecretKey) < 8 {
		return fmt.Errorf("MinioSetOptions: MinIO wants an access key of at least 3 characters and a secret of at least 8 (got %d and %d)", len(o.AccessKey), len(o.SecretKey))
	}
	return nil
}

// MinioSet is a distributed, erasure-coded MinIO of several server
// processes on one machine, one drive each, behind a TCP Balancer.
type MinioSet struct {
	opts  MinioSetOptions
	lb    *Balancer
	nodes []*minioNode
}

type minioNode struct {
	addr, console, dir, log string
	proc                    *Process
}

// MinioDistributed starts o.Nodes `minio server` processes forming one
// erasure set (each `--address host:portI`, the drives
// http://host:port1/dir1 ... http://host:portN/dirN, data under
// t.TempDir()) and a Balancer in front of them, and waits until the
// cluster is healthy (/minio/health/cluster: it has write quorum). Every
// node and the balancer stop when the test ends. Without minio the test is
// skipped under -short and fails otherwise.
func MinioDistributed(t testing.TB, o MinioSetOptions) *MinioSet {
	t.Helper()
	NeedBinary(t, "minio")
	o = o.withDefaults(t)
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m := &MinioSet{opts: o}
	var backends []string
	for i := range o.Nodes {
		n := &minioNode{
			addr:    hostPort(o.Host, FreePortOn(t, o.Host)),
			console: hostPort(o.Host, FreePortOn(t, o.Host)),
			dir:     filepath.Join(dir, "node"+strconv.Itoa(i)),
			log:     filepath.Join(dir, "logs", "minio"+strconv.Itoa(i)+".log"),
		}
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		m.nodes = append(m.nodes, n)
		backends = append(backends, n.addr)
	}
	lb, err := NewBalancer(o.Host, backends)
	if err != nil {
		t.Fatal(err)
	}
	m.lb = lb
	// Registered before the nodes start: it runs after theirs.
	t.Cleanup(func() { lb.Close() })
	t.Cleanup(m.stopAll)
	for i := range m.nodes {
		if err := m.start(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.waitHealthy(s3ReadyTimeout); err != nil {
		t.Fatal(err)
	}
	return m
}

// Endpoint is host:port of the balancer in front of the nodes.
func (m *MinioSet) Endpoint() string { return m.lb.Addr() }

// Server is the set as an S3Server: the balancer, the root credentials.
func (m *MinioSet) Server() S3Server {
	return S3Server{Endpoint: m.Endpoint(), AccessKey: m.opts.AccessKey, SecretKey: m.opts.SecretKey, Region: S3Region}
}

// Nodes is how many nodes the set has.
func (m *MinioSet) Nodes() int { return len(m.nodes) }

// NodeDir is node i's drive.
func (m *MinioSet) NodeDir(i int) string { return m.nodes[i].dir }

// Kill sends node i SIGKILL and waits for it to exit: a node lost at
// once, with no chance to finish what it was doing.
func (m *MinioSet) Kill(t testing.TB, i int) {
	t.Helper()
	p := m.node(t, i).proc
	if !p.Alive() {
		t.Fatalf("minio node %d is not running", i)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill minio node %d: %v", i, err)
	}
	<-p.Exited()
}

// Restart starts node i again, killed or not, with the same address and
// drive, and waits until it is ready and the cluster healthy.
func (m *MinioSet) Restart(t testing.TB, i int) {
	t.Helper()
	n := m.node(t, i)
	n.proc.Stop(minioStopTimeout)
	if err := m.start(i); err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(n.proc, "minio node "+strconv.Itoa(i), s3ReadyTimeout, func() error {
		return httpOK("http://" + n.addr + "/minio/health/ready")
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.waitHealthy(s3ReadyTimeout); err != nil {
		t.Fatal(err)
	}
}

// Healthy reports whether the cluster has write quorum, asked through the
// balancer.
func (m *MinioSet) Healthy() error {
	return httpOK("http://" + m.Endpoint() + "/minio/health/cluster")
}

func (m *MinioSet) node(t testing.TB, i int) *minioNode {
	t.Helper()
	if i < 0 || i >= len(m.nodes) {
		t.Fatalf("minio node %d: the set has nodes 0 to %d", i, len(m.nodes)-1)
	}
	return m.nodes[i]
}

// start starts node i's process.
func (m *MinioSet) start(i int) error {
	n := m.nodes[i]
	args := []string{"server", "--address", n.addr, "--console-address", n.console, "--quiet"}
	for _, d := range m.nodes {
		args = append(args, "http://"+d.addr+d.dir)
	}
	cmd := exec.Command("minio", args...)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.opts.AccessKey, "MINIO_ROOT_PASSWORD="+m.opts.SecretKey,
		"MINIO_UPDATE=off", "MINIO_BROWSER=off",
		// The drives share the machine's root disk, which MinIO otherwise refuses.
		"MINIO_CI_CD=on",
		// In a container (/.dockerenv) MinIO waits for a loopback endpoint to
		// "resolve to a valid IP" unless told which one is its own.
		"_MINIO_SERVER_LOCAL="+n.addr)
	p, err := StartProcess(cmd, n.log)
	if err != nil {
		return fmt.Errorf("minio node %d: %w", i, err)
	}
	n.proc = p
	return nil
}

// waitHealthy waits until the cluster answers healthy, failing early if
// every node has exited.
func (m *MinioSet) waitHealthy(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := m.Healthy()
		if err == nil {
			return nil
		}
		if m.allExited() || time.Now().After(deadline) {
			return fmt.Errorf("distributed minio not healthy after %s: %w\nnode 0's log:\n%s", d, err, tail(m.nodes[0].proc.Output()))
		}
		time.Sleep(s3PollInterval)
	}
}

func (m *MinioSet) allExited() bool {
	for _, n := range m.nodes {
		if n.proc.Alive() {
			return false
		}
	}
	return true
}

// stopAll stops every node that runs, all at once.
func (m *MinioSet) stopAll() {
	for _, n := range m.nodes {
		if n.proc != nil && n.proc.Alive() {
			n.proc.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range m.nodes {
		if n.proc != nil {
			n.proc.Stop(minioStopTimeout)
		}
	}
}

// httpOK GETs url and wants 200.
func httpOK(url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
