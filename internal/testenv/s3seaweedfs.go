package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// S3Options say how to start an S3 server.
type S3Options struct {
	// Host is the address it binds to and is reached at. Default
	// DefaultS3Host.
	Host string
}

func (o S3Options) withDefaults() S3Options {
	if o.Host == "" {
		o.Host = DefaultS3Host
	}
	return o
}

// seaweedAdmin is the name of the identity SeaweedFS runs the tests' S3
// requests as.
const seaweedAdmin = "sandq-admin"

// seaweedVolumeSizeMB caps a SeaweedFS volume, so that a test's many small
// volumes stay small.
const seaweedVolumeSizeMB = 64

// seaweedStopTimeout is how long weed gets to exit after SIGTERM before
// it is killed: its data is thrown away, and its shutdown waits on peers
// that are going too.
const seaweedStopTimeout = 2 * time.Second

// seaweedIdentities is weed's S3 identities file (-s3.config).
type seaweedIdentities struct {
	Identities []seaweedIdentity `json:"identities"`
}

type seaweedIdentity struct {
	Name        string              `json:"name"`
	Credentials []seaweedCredential `json:"credentials"`
	Actions     []string            `json:"actions"`
}

type seaweedCredential struct {
	AccessKey string `json:"accessKey"`
	SecretKey string `json:"secretKey"`
}

// SeaweedFS runs a SeaweedFS server for the test — `weed server -s3`:
// master, volume server, filer and S3 gateway in one process — on free
// ports of o.Host, with its data under t.TempDir() and one S3 identity, an
// administrator with random credentials (weed's -s3.config identities
// file). It returns once S3 answers a signed request, and stops it when the
// test ends. Without weed the test is skipped under -short and fails
// otherwise (NeedBinary).
func SeaweedFS(t testing.TB, o S3Options) S3Server {
	t.Helper()
	NeedBinary(t, "weed")
	o = o.withDefaults()
	dir := t.TempDir()
	srv := S3Server{AccessKey: seaweedAdmin, SecretKey: randomSecret(t), Region: S3Region}
	config := filepath.Join(dir, "s3.json")
	b, _ := json.Marshal(seaweedIdentities{Identities: []seaweedIdentity{{
		Name:        seaweedAdmin,
		Credentials: []seaweedCredential{{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}},
		Actions:     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}})
	if err := os.WriteFile(config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	var grpcPorts []int
	port := func(grpc bool) string {
		p := FreePortOn(t, o.Host)
		if grpc {
			grpcPorts = append(grpcPorts, p)
		}
		return strconv.Itoa(p)
	}
	s3Port := FreePortOn(t, o.Host)
	srv.Endpoint = hostPort(o.Host, s3Port)
	master := hostPort(o.Host, FreePortOn(t, o.Host))
	_, masterPort, _ := net.SplitHostPort(master)
	args := []string{"server",
		"-dir=" + data, "-ip=" + o.Host, "-ip.bind=" + o.Host,
		"-master.port=" + masterPort, "-master.port.grpc=" + port(true),
		// No usage reports: tests reach nothing beyond this machine.
		"-master.telemetry=false",
		"-master.volumeSizeLimitMB=" + strconv.Itoa(seaweedVolumeSizeMB),
		"-volume.port=" + port(false), "-volume.port.grpc=" + port(true), "-volume.max=0", "-volume.preStopSeconds=0",
		"-filer", "-filer.port=" + port(false), "-filer.port.grpc=" + port(true),
		"-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port=" + strconv.Itoa(s3Port), "-s3.port.grpc=" + port(true),
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-s3.localSocket=" + filepath.Join(dir, "s3.sock"),
		"-s3.config=" + config,
	}
	p, err := StartProcess(exec.Command("weed", args...), filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(seaweedStopTimeout)
		removeSeaweedSockets(grpcPorts)
	})
	// Ready: a volume server has joined the master, S3 answers a signed
	// request, and takes a write (which waits until the filer has joined
	// the master's lock ring, some seconds after the rest).
	if err := waitUntil(p, "SeaweedFS S3 at "+srv.Endpoint, s3ReadyTimeout, func() error {
		if err := seaweedHasVolumeServer(master); err != nil {
			return err
		}
		if err := srv.answers(context.Background()); err != nil {
			return err
		}
		return srv.takesWrite(context.Background())
	}); err != nil {
		t.Fatal(err)
	}
	return srv
}

// seaweedHasVolumeServer asks the master at addr whether a volume server
// with free slots has joined.
func seaweedHasVolumeServer(addr string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/dir/status")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st struct {
		Topology struct{ Free int }
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("master /dir/status: %w", err)
	}
	if st.Topology.Free < 1 {
		return errors.New("no volume server with free slots has joined the master yet")
	}
	return nil
}

// removeSeaweedSockets removes the unix sockets weed makes in the system's
// temporary directory for its gRPC ports (seaweedfs-NAME-grpc-PORT.sock),
// which a killed weed leaves behind.
func removeSeaweedSockets(ports []int) {
	for _, p := range ports {
		matches, _ := filepath.Glob(filepath.Join(os.TempDir(), "seaweedfs-*-"+strconv.Itoa(p)+".sock"))
		for _, m := range matches {
			os.Remove(m)
		}
	}
}
