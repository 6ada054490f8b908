package executor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sandq/sandq/executor/image"
)

// Snapshot templates.
//
// Most analysis jobs begin by importing pandas and matplotlib, which takes
// seconds in a fresh sandbox. A template is a sandbox that did that once
// and was checkpointed (`runsc checkpoint`) while it waited for a job: its
// only program is the launcher (snapshot_launcher.go), which imports an
// image's preload modules and then polls for a request file in its job
// mount. No job code ever runs in it. A job that fits the template gets a
// new container of its own (its own ID, bundle, job, inputs and outputs
// mounts, cgroup and limits) that `runsc restore` fills with the template's
// memory; the launcher, restored, finds that job's request and runs its
// script. Each job restores from the same checkpoint, so nothing one job
// does reaches another.
//
// A template is stored beside its image, in IMAGE_DIR/NAME/templates/KEY,
// with its metadata (template.json) and a digest of its checkpoint files.
// KEY hashes everything the checkpoint depends on: the image's digest, the
// runsc binary, the platform, the interpreter, the preload list, the
// environment, the user and the memory and disk sizes. A template whose key
// no longer matches is stale and is rebuilt; stale ones of an image are
// removed when a new one is built.

// DefaultPython is the interpreter a template runs.
const DefaultPython = "/usr/bin/python3"

// templateFormat changes when the launcher or the template layout changes
// in a way that makes older templates unusable.
const templateFormat = 1

// Files in a template directory.
const (
	templateMetaFile      = "template.json"
	templateCheckpointDir = "checkpoint"
	// templateStateFile is runsc's state file in a checkpoint.
	templateStateFile = "checkpoint.img"
)

// templateBuildTimeout bounds a template's preload step.
const templateBuildTimeout = 5 * time.Minute

// TemplateSpec describes a template to make for an image.
type TemplateSpec struct {
	// Image is the image's root filesystem (IMAGE_DIR/NAME/rootfs).
	Image string
	// Dir holds the image's templates, one directory each. Default: beside
	// the image, IMAGE_DIR/NAME/templates.
	Dir string
	// ImageDigest is the image's recorded content digest. An image without
	// one cannot have a template: there is nothing to tell it has changed.
	ImageDigest string
	// Python is the interpreter, an absolute path in the image. Default
	// DefaultPython.
	Python string
	// Preload are the modules the template imports: "matplotlib" is
	// imported with the Agg backend set; "matplotlib.pyplot" imports
	// pyplot.
	Preload []string
	// Env is the template process's environment. A job fits the template
	// only when the variables that importing reads (see
	// snapshotFixedEnv) are the same in its environment.
	Env []string
	// UID and GID the template, and so its jobs, run as.
	UID, GID uint32
	// Limits of the template's sandbox. Its jobs must have the same Memory
	// and Disk: the size of the memory the guest sees and of the overlay
	// holding writes to the root filesystem are fixed in the checkpoint.
	// Pids is the template's own; its jobs keep theirs. Timeout and the
	// output and log limits are not used.
	Limits Limits
}

func (ts TemplateSpec) withDefaults() TemplateSpec {
	if ts.Python == "" {
		ts.Python = DefaultPython
	}
	if ts.Dir == "" {
		ts.Dir = templatesDir(ts.Image)
	}
	ts.Preload = slices.Clone(ts.Preload)
	ts.Env = slices.Clone(ts.Env)
	sort.Strings(ts.Env)
	l := ts.Limits
	ts.Limits = Limits{
		Timeout: templateBuildTimeout, Memory: l.Memory, Disk: l.Disk, Pids: l.Pids,
		OutputBytes: 1 << 20, OutputFiles: 16, LogBytes: 1 << 20, LogTail: 4096,
	}
	return ts
}

func (ts TemplateSpec) check() error {
	switch {
	case ts.ImageDigest == "":
		return fmt.Errorf("image %s has no recorded digest; rebuild or re-import it to have a snapshot template", filepath.Dir(ts.Image))
	case !strings.HasPrefix(ts.Python, "/"):
		return fmt.Errorf("template interpreter %q: want an absolute path in the image", ts.Python)
	case len(ts.Preload) == 0:
		return errors.New("a snapshot template needs at least one module to preload")
	case ts.Limits.Memory <= 0 || ts.Limits.Disk <= 0 || ts.Limits.Pids <= 0:
		return fmt.Errorf("template limits must be positive: memory %d, disk %d, pids %d", ts.Limits.Memory, ts.Limits.Disk, ts.Limits.Pids)
	}
	if err := image.CheckPreload(ts.Preload); err != nil {
		return err
	}
	if err := CheckImage(ts.Image); err != nil {
		return err
	}
	if err := checkImageFile(ts.Image, ts.Python); err != nil {
		return err
	}
	return nil
}

// checkImageFile refuses an image without the executable file p (an
// absolute path inside it), resolving links inside the image.
func checkImageFile(rootfs, p string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("image %s: %w", rootfs, err)
	}
	defer root.Close()
	st, err := root.Stat(strings.TrimPrefix(p, "/"))
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("image %s has no executable %s for a snapshot template", rootfs, p)
	}
	return nil
}

// TemplateInfo is a template's metadata, stored in its directory.
type TemplateInfo struct {
	Format int `json:"format"`
	// Key names the template's directory (see the package comment).
	Key         string `json:"key"`
	ImageDigest string `json:"image_digest"`
	// RunscVersion is the version runsc reports, RunscDigest the sha256
	// of its binary.
	RunscVersion string   `json:"runsc_version"`
	RunscDigest  string   `json:"runsc_digest"`
	Platform     string   `json:"platform"`
	Python       string   `json:"python"`
	Preload      []string `json:"preload"`
	Env          []string `json:"env"`
	UID          uint32   `json:"uid"`
	GID          uint32   `json:"gid"`
	// Memory and Disk are the sandbox's sizes, in bytes, which its jobs
	// share.
	Memory int64 `json:"memory"`
	Disk   int64 `json:"disk"`
	// Digest is "sha256:" and the hash of the checkpoint's files (their
	// names, sizes and contents, in name order).
	Digest string `json:"digest"`
	// CheckpointBytes is the size of the checkpoint's files.
	CheckpointBytes int64     `json:"checkpoint_bytes"`
	Created         time.Time `json:"created"`
	// PreloadMS is how long the template took from start to ready,
	// CheckpointMS how long the checkpoint took.
	PreloadMS    int64 `json:"preload_ms"`
	CheckpointMS int64 `json:"checkpoint_ms"`
}

// Template is a snapshot template on disk.
type Template struct {
	// Dir is IMAGE_DIR/NAME/templates/KEY.
	Dir  string
	Info TemplateInfo
	// rootfs is the image's root filesystem.
	rootfs string
}

// CheckpointDir is the runsc checkpoint (`runsc restore --image-path`).
func (t *Template) CheckpointDir() string { return filepath.Join(t.Dir, templateCheckpointDir) }

// Rootfs is the root filesystem of the template's image.
func (t *Template) Rootfs() string { return t.rootfs }

// templatesDir holds the templates of the image whose root filesystem is
// rootfs.
func templatesDir(rootfs string) string {
	return filepath.Join(filepath.Dir(filepath.Clean(rootfs)), "templates")
}

// runscIdentity is the version and binary digest of a runsc, cached by
// path, size and modification time: hashing the binary takes a while.
var runscIdentity = struct {
	sync.Mutex
	m map[string][2]string
}{m: map[string][2]string{}}

func (r *RunscRunner) runscID(ctx context.Context) (version, digest string, err error) {
	st, err := os.Stat(r.runsc)
	if err != nil {
		return "", "", fmt.Errorf("runsc: %w", err)
	}
	k := fmt.Sprintf("%s|%d|%d", r.runsc, st.Size(), st.ModTime().UnixNano())
	runscIdentity.Lock()
	id, ok := runscIdentity.m[k]
	runscIdentity.Unlock()
	if ok {
		return id[0], id[1], nil
	}
	v, err := CheckRunsc(ctx, r.runsc, r.cfg.Platform)
	if err != nil {
		return "", "", err
	}
	d, err := fileDigest(r.runsc)
	if err != nil {
		return "", "", fmt.Errorf("runsc: %w", err)
	}
	runscIdentity.Lock()
	runscIdentity.m[k] = [2]string{v.Version, d}
	runscIdentity.Unlock()
	return v.Version, d, nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// templateInfo is the metadata a template of ts made by this runner has
// before it is built, its key included.
func (r *RunscRunner) templateInfo(ctx context.Context, ts TemplateSpec) (TemplateInfo, error) {
	version, digest, err := r.runscID(ctx)
	if err != nil {
		return TemplateInfo{}, err
	}
	info := TemplateInfo{
		Format: templateFormat, ImageDigest: ts.ImageDigest, RunscVersion: version, RunscDigest: digest,
		Platform: r.cfg.Platform, Python: ts.Python, Preload: ts.Preload, Env: ts.Env, UID: ts.UID, GID: ts.GID,
		Memory: ts.Limits.Memory, Disk: ts.Limits.Disk,
	}
	info.Key = info.key()
	return info, nil
}

// key hashes what a template's checkpoint depends on.
func (i TemplateInfo) key() string {
	b, _ := json.Marshal([]any{i.Format, i.ImageDigest, i.RunscVersion, i.RunscDigest, i.Platform, i.Python, i.Preload, i.Env, i.UID, i.GID, i.Memory, i.Disk, snapshotLauncher})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

// LoadTemplate reads the template in dir and checks its checkpoint against
// its digest. Errors name the template.
func LoadTemplate(dir, rootfs string) (*Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, templateMetaFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	t := &Template{Dir: dir, rootfs: rootfs}
	if err := json.Unmarshal(b, &t.Info); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %s: %w", dir, templateMetaFile, err)
	}
	if t.Info.Key != filepath.Base(dir) || t.Info.key() != t.Info.Key {
		return nil, fmt.Errorf("snapshot template %s: its metadata does not match its key", dir)
	}
	digest, _, err := checkpointDigest(t.CheckpointDir())
	if err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	if digest != t.Info.Digest {
		return nil, fmt.Errorf("snapshot template %s is corrupt: its checkpoint's digest is %s, its metadata says %s", dir, digest, t.Info.Digest)
	}
	return t, nil
}

// checkpointDigest hashes the files of a checkpoint: name, size and
// content of each, in name order.
func checkpointDigest(dir string) (string, int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	var total int64
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return "", 0, fmt.Errorf("checkpoint %s: %s is not a regular file", dir, e.Name())
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", 0, err
		}
		st, err := f.Stat()
		if err == nil {
			fmt.Fprintf(h, "%q %d\n", e.Name(), st.Size())
			_, err = io.Copy(h, f)
			total += st.Size()
		}
		f.Close()
		if err != nil {
			return "", 0, err
		}
		if e.Name() == templateStateFile {
			n++
		}
	}
	if n == 0 {
		return "", 0, fmt.Errorf("checkpoint %s has no %s", dir, templateStateFile)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), total, nil
}

// EnsureTemplate returns the template of ts: the one stored beside the
// image when its key matches and its checkpoint its digest, or else a new
// one, built now (in seconds: the preload step imports the modules). A
// stored template that is corrupt is moved aside and rebuilt; stale ones of
// the image (another image digest or runsc) are removed.
func (r *RunscRunner) EnsureTemplate(ctx context.Context, ts TemplateSpec) (*Template, error) {
	ts = ts.withDefaults()
	if err := ts.check(); err != nil {
		return nil, fmt.Errorf("snapshot template: %w", err)
	}
	info, err := r.templateInfo(ctx, ts)
	if err != nil {
		return nil, fmt.Errorf("snapshot template: %w", err)
	}
	dir := filepath.Join(ts.Dir, info.Key)
	t, err := LoadTemplate(dir, ts.Image)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		r.logger.Warn("snapshot template unusable; rebuilding it", "template", dir, "err", err)
		if err := setAside(dir, "bad"); err != nil {
			return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
		}
	}
	return r.buildTemplate(ctx, ts, info, dir)
}

// setAside renames a template directory out of the way (kept for a look;
// removed with the image's next template build).
func setAside(dir, why string) error {
	err := os.Rename(dir, filepath.Join(filepath.Dir(dir), "."+why+"-"+filepath.Base(dir)+"-"+randomHex(4)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// buildTemplate boots the template sandbox, waits for the launcher to be
// ready, checkpoints it into a new directory and moves that to dir. Nothing
// of the sandbox is left, whatever happens.
func (r *RunscRunner) buildTemplate(ctx context.Context, ts TemplateSpec, info TemplateInfo, dir string) (_ *Template, err error) {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot template: %w", err)
	}
	removeStaleTemplates(parent, info)
	spec := Spec{
		Name: "template-" + info.Key, Image: ts.Image, Env: ts.Env, UID: ts.UID, GID: ts.GID, Limits: ts.Limits,
		Args: append([]string{ts.Python, JobMount + "/" + SnapshotLauncherFile}, ts.Preload...),
	}
	s, err := r.Prepare(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	sb := s.(*runscSandbox)
	defer func() {
		// Run was never called: the container and its logs are ended here.
		if derr := sb.delete(ctx); derr != nil {
			err = errors.Join(err, derr)
		}
		if sb.logs != nil {
			sb.logs.finish(sb.logger, nil)
		}
		if rerr := sb.Release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	if err := os.WriteFile(filepath.Join(sb.JobDir(), SnapshotLauncherFile), []byte(snapshotLauncher), 0o644); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	began := time.Now()
	if err := sb.Create(ctx); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	pid, err := readPidFile(sb.pidFile())
	if err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	w, err := watchExit(sb.bootLogDir(), pid)
	if err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	defer w.Close()
	if _, err := sb.runsc(ctx, time.Minute, "start", sb.id); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	if err := sb.waitReady(ctx, w.Result()); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	ready := time.Now()
	tmp := filepath.Join(parent, ".build-"+info.Key+"-"+randomHex(4))
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	cp := filepath.Join(tmp, templateCheckpointDir)
	// Uncompressed, so that restores read the pages straight from the
	// file (and may do so in the background).
	if _, err := sb.runsc(ctx, 2*time.Minute, "checkpoint", "--image-path", cp, "--compression=none", sb.id); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	info.PreloadMS = ready.Sub(began).Milliseconds()
	info.CheckpointMS = time.Since(ready).Milliseconds()
	info.Created = time.Now().UTC().Truncate(time.Second)
	if info.Digest, info.CheckpointBytes, err = checkpointDigest(cp); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, templateMetaFile), append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another worker on this host made it meanwhile: use theirs.
		if t, lerr := LoadTemplate(dir, ts.Image); lerr == nil {
			return t, nil
		}
		return nil, fmt.Errorf("snapshot template %s: %w", dir, err)
	}
	r.logger.Info("snapshot template built", "template", dir, "preload", strings.Join(info.Preload, ","),
		"preload_ms", info.PreloadMS, "checkpoint_ms", info.CheckpointMS, "checkpoint_bytes", info.CheckpointBytes)
	return &Template{Dir: dir, Info: info, rootfs: ts.Image}, nil
}

// waitReady waits for the launcher's ready line on stdout; exited delivers
// the sandbox's end, which is a failure here (an import failed).
func (s *runscSandbox) waitReady(ctx context.Context, exited <-chan waitResult) error {
	stdout := filepath.Join(s.dir, "logs", "stdout.log")
	deadline := time.NewTimer(s.spec.Limits.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, _ := os.ReadFile(stdout); bytes.Contains(b, []byte(snapshotReadyLine+"\n")) {
			return nil
		}
		select {
		case res := <-exited:
			stderr, _ := os.ReadFile(filepath.Join(s.dir, "logs", "stderr.log"))
			if len(stderr) > 2048 {
				stderr = stderr[len(stderr)-2048:]
			}
			return fmt.Errorf("the preload step ended (status %d, %v) before it was ready: %s", res.status, res.err, strings.TrimSpace(string(stderr)))
		case <-deadline.C:
			return fmt.Errorf("the preload step was not ready after %s", s.spec.Limits.Timeout)
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// removeStaleTemplates removes the templates in dir (an image's templates
// directory) made for another image digest, runsc or launcher, those set
// aside, and builds older than a day (killed ones). Templates of other
// sizes or preload lists stay: other workers may use them.
func removeStaleTemplates(dir string, current TemplateInfo) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			if st, err := os.Stat(p); err == nil && (!strings.HasPrefix(e.Name(), ".build-") || time.Since(st.ModTime()) > 24*time.Hour) {
				os.RemoveAll(p)
			}
			continue
		}
		b, err := os.ReadFile(filepath.Join(p, templateMetaFile))
		if err != nil {
			continue
		}
		var info TemplateInfo
		// A key that no longer hashes to its directory's name was made by
		// another launcher.
		if json.Unmarshal(b, &info) != nil || info.ImageDigest != current.ImageDigest || info.RunscDigest != current.RunscDigest ||
			info.Format != current.Format || info.key() != e.Name() {
			os.RemoveAll(p)
		}
	}
}
