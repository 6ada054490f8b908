package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
	"golang.org/x/sync/errgroup"
)

// egressDoc is the result's account of a networked job's network: its
// policy, the proxy's audit a, and what the firewall refused around the
// proxy (b; nil when it could not be read).
func egressDoc(p *jobs.NetworkPolicy, a *egress.Audit, b *jobnet.Bypass) *jobs.EgressDoc {
	d := &jobs.EgressDoc{
		Asked: p.Asked, Hosts: p.Hosts, Ports: p.Ports,
		Requests: []jobs.EgressEvent{}, Destinations: []jobs.EgressDestination{}, Refusals: []jobs.EgressRefusal{},
	}
	if a != nil {
		d.Allowed, d.Refused, d.Failed = int(a.Allowed), int(a.Refused), int(a.Failed)
		d.BytesOut, d.BytesIn = a.BytesOut, a.BytesIn
		d.RequestsUnlisted = int(a.Unlisted)
		for _, e := range a.Events {
			d.Requests = append(d.Requests, jobs.EgressEvent{
				Time: e.Time, Host: e.Host, Port: e.Port, Method: e.Method,
				Decision: e.Decision, Reason: e.Reason, BytesOut: e.BytesOut, BytesIn: e.BytesIn,
			})
		}
		for _, x := range a.Destinations {
			d.Destinations = append(d.Destinations, jobs.EgressDestination{
				Host: x.Host, Port: x.Port, Allowed: int(x.Allowed), Failed: int(x.Failed), BytesOut: x.BytesOut, BytesIn: x.BytesIn,
			})
		}
		if o := a.OtherDestinations; o != nil {
			d.OtherDestinations = &jobs.EgressOther{
				Destinations: int(o.Destinations), Count: int(o.Allowed + o.Failed),
				Allowed: int(o.Allowed), Failed: int(o.Failed), BytesOut: o.BytesOut, BytesIn: o.BytesIn,
			}
		}
		for _, x := range a.Refusals {
			d.Refusals = append(d.Refusals, jobs.EgressRefusal{Host: x.Host, Port: x.Port, Count: int(x.Count), Reason: x.Reason})
		}
		if o := a.OtherRefusals; o != nil {
			d.OtherRefusals = &jobs.EgressOther{Destinations: int(o.Destinations), Count: int(o.Count)}
		}
	}
	if b != nil {
		d.Bypass = &jobs.EgressBypass{Attempts: int64(b.Packets), Bytes: int64(b.Bytes)}
	}
	return d
}

// fetchAll downloads the script and the inputs into the sandbox, several at
// a time.
func (h *Handler) fetchAll(ctx context.Context, job *jobs.Job, sb executor.Sandbox) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs.Transfers)
	g.Go(func() error { return h.fetch(gctx, job.Script, sb.JobDir()) })
	g.Go(func() error { return writePythonSite(sb.JobDir()) })
	for _, in := range job.Inputs {
		g.Go(func() error { return h.fetch(gctx, in, sb.InputsDir()) })
	}
	return g.Wait()
}

// fetch downloads an uploaded file into dir under its name and checks it.
func (h *Handler) fetch(ctx context.Context, ref jobs.FileRef, dir string) error {
	if err := jobs.CheckName("input", ref.Name); err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	dst := filepath.Join(dir, filepath.FromSlash(ref.Name))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	sum, err := h.store.Download(ctx, ref.Key, dst, ref.Size)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return fmt.Errorf("input %s is gone from the store: %w: %w", ref.Name, err, asynq.SkipRetry)
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", ref.Name, err)
	}
	if sum != ref.SHA256 {
		return fmt.Errorf("input %s: sha256 %s does not match the uploaded %s", ref.Name, sum, ref.SHA256)
	}
	return os.Chmod(dst, 0o644)
}

// upload stores the outputs and logs under prefix and fills res with their
// links. Outputs are read only now, after the container is gone.
func (h *Handler) upload(ctx context.Context, sb executor.Sandbox, out *executor.Outcome, prefix string, res *jobs.Result) error {
	coll, err := sb.Outputs()
	if err != nil {
		return fmt.Errorf("collect outputs: %w", err)
	}
	res.SkippedOutputsOmitted = coll.SkippedOmitted
	skip := func(d jobs.SkippedDoc) {
		if len(res.SkippedOutputs) < executor.MaxSkippedListed {
			res.SkippedOutputs = append(res.SkippedOutputs, d)
		} else {
			res.SkippedOutputsOmitted++
		}
	}
	for _, s := range coll.Skipped {
		skip(jobs.SkippedDoc(s))
	}
	// A name whose object key the store would refuse is the job's doing:
	// skipped, not a failure to retry.
	outPrefix := prefix + "outputs/"
	files := make([]executor.OutputFile, 0, len(coll.Files))
	for _, f := range coll.Files {
		if n := len(outPrefix) + len(f.Path); n > storage.MaxKeyBytes {
			skip(jobs.SkippedDoc{Path: executor.ShowPath(f.Path), Type: "file", Reason: fmt.Sprintf("object key of %d bytes is over the store's %d-byte limit", n, storage.MaxKeyBytes)})
			continue
		}
		files = append(files, f)
	}
	// Outputs and both logs upload several at a time; the result lists the
	// outputs in the collection's order.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs.Transfers)
	docs := make([]jobs.OutputDoc, len(files))
	refused := make([]bool, len(files))
	for i, f := range files {
		g.Go(func() error {
			doc, err := h.uploadOutput(gctx, coll, f, outPrefix)
			if errors.Is(err, storage.ErrInvalidKey) {
				refused[i] = true
				return nil
			}
			docs[i] = doc
			return err
		})
	}
	for _, s := range []struct {
		name string
		sum  executor.LogSummary
		dst  **jobs.LogDoc
	}{{"stdout", out.Stdout, &res.Stdout}, {"stderr", out.Stderr, &res.Stderr}} {
		g.Go(func() error {
			doc := &jobs.LogDoc{Tail: strings.ToValidUTF8(string(s.sum.Tail), "\uFFFD"), Bytes: s.sum.Bytes, DroppedBytes: s.sum.DroppedBytes}
			doc.Truncated = int64(len(s.sum.Tail)) < s.sum.Bytes
			key := prefix + "logs/" + s.name + ".log"
			const logType = "text/plain; charset=utf-8"
			if _, err := h.store.PutFile(gctx, key, s.sum.Path, storage.PutOptions{ContentType: logType}); err != nil {
				return err
			}
			link, err := h.store.Presign(gctx, key, h.cfg.LinkExpiry, storage.LinkOptions{ContentType: logType})
			if err != nil {
				return err
			}
			doc.URL, doc.ExpiresAt, doc.Key = link.URL, link.ExpiresAt, key
			*s.dst = doc
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, doc := range docs {
		if refused[i] {
			skip(jobs.SkippedDoc{Path: executor.ShowPath(files[i].Path), Type: "file", Reason: "the store refused its object key"})
			continue
		}
		res.Outputs = append(res.Outputs, doc)
		res.UploadedBytes += doc.Size
	}
	for _, l := range []*jobs.LogDoc{res.Stdout, res.Stderr} {
		res.UploadedBytes += l.Bytes - l.DroppedBytes
	}
	return nil
}

func (h *Handler) uploadOutput(ctx context.Context, coll *executor.Collection, f executor.OutputFile, prefix string) (jobs.OutputDoc, error) {
	file, err := coll.Open(f)
	if err != nil {
		return jobs.OutputDoc{}, err
	}
	defer file.Close()
	ctype := mime.TypeByExtension(path.Ext(f.Path))
	if ctype == "" {
		head := make([]byte, 512)
		n, _ := io.ReadFull(file, head)
		ctype = http.DetectContentType(head[:n])
		if _, err := file.Seek(0, io.SeekStart); err != nil {
			return jobs.OutputDoc{}, err
		}
	}
	// Never a type a browser would run on the store's origin; stored and
	// linked as a download named as the job named it.
	ctype = storage.SafeContentType(ctype)
	name := path.Base(f.Path)
	key := prefix + f.Path
	obj, err := h.store.Put(ctx, key, file, f.Size, storage.PutOptions{ContentType: ctype, Filename: name})
	if err != nil {
		return jobs.OutputDoc{}, err
	}
	link, err := h.store.Presign(ctx, key, h.cfg.LinkExpiry, storage.LinkOptions{ContentType: ctype, Filename: name})
	if err != nil {
		return jobs.OutputDoc{}, err
	}
	return jobs.OutputDoc{Path: f.Path, Size: obj.Size, SHA256: obj.SHA256, ContentType: ctype, URL: link.URL, ExpiresAt: link.ExpiresAt, Key: key}, nil
}
