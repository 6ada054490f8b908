package executor

import (
	"encoding/json"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// WriteBundle checks spec as Prepare does, makes bundleDir and writes there
// the OCI runtime spec (config.json) of a container that runs spec exactly
// as a sandbox's container does, without network: inputsDir, jobDir and
// outputsDir are mounted at InputsMount, JobMount and OutputsMount, and
// cgroupsPath is its cgroup. It is for running a sandbox's container alone,
// without the rest of a sandbox (the bench's bare runner).
func WriteBundle(bundleDir string, spec Spec, inputsDir, jobDir, outputsDir, cgroupsPath string) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := os.MkdirAll(bundleDir, 0o700); err != nil {
		return err
	}
	return writeBundle(bundleDir, ociSpec(spec, inputsDir, jobDir, outputsDir, cgroupsPath, ""))
}

// writeBundle writes an OCI runtime spec as bundleDir/config.json.
func writeBundle(bundleDir string, s *specs.Spec) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundleDir, "config.json"), b, 0o600)
}

// ociSpec is the OCI runtime spec of one sandbox: the image as root (runsc
// layers a size-capped overlay over it, so the image is never written), the job's
// directories as bind mounts, no capabilities, and cgroup limits. The CPU
// limit is not among them, though runsc would apply one (seen with
// systrap on cgroup v1): Run sets it as the job starts (applyCPULimit),
// for every kind of sandbox alike, so that neither a cold sandbox's
// creation nor a restore is slowed by the job's limit, and a sandbox made
// before its job still runs under the job's.
func ociSpec(spec Spec, inputsDir, jobDir, outputsDir, cgroupsPath, netns string) *specs.Spec {
	memory := spec.Limits.Memory
	pids := spec.Limits.Pids
	ro := []string{"bind", "ro", "nosuid", "nodev"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User:            specs.User{UID: spec.UID, GID: spec.GID},
			Args:            spec.Args,
			Env:             spec.Env,
			Cwd:             WorkDir,
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 4096, Soft: 4096},
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
			},
		},
		Root:     &specs.Root{Path: spec.Image, Readonly: false},
		Hostname: "sandbox",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: InputsMount, Type: "bind", Source: inputsDir, Options: ro},
			{Destination: JobMount, Type: "bind", Source: jobDir, Options: ro},
			{Destination: OutputsMount, Type: "bind", Source: outputsDir, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &memory, Swap: &memory},
				Pids:   &specs.LinuxPids{Limit: &pids},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: netns},
			},
		},
	}
}
