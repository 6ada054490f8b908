package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"

	"github.com/sandq/sandq/storage"
)

// InputFrom asks for outputs of a finished job as a new job's inputs: all
// of them, or those whose path Glob matches (path.Match: "*" does not
// cross "/"). Each becomes the input named as the output's path, so
// "plots/a.png" is /mnt/inputs/plots/a.png. The files are copied inside
// the store; the producer never downloads them.
type InputFrom struct {
	Job  string `json:"job"`
	Glob string `json:"glob,omitempty"`
}

// InputOrigin is the output an input was copied from.
type InputOrigin struct {
	Job  string `json:"job"`
	Path string `json:"path"`
}

// ErrJobNotFinished refuses outputs of a job that has not ended yet.
var ErrJobNotFinished = errors.New("job not finished")

// ErrJobNotSucceeded refuses outputs of a job that ended but did not
// succeed: a chain stops at a failed step rather than feed what it left
// half-written to the next.
var ErrJobNotSucceeded = errors.New("job did not succeed")

// InputFromError refuses an inputs_from entry because of its job: not
// found (Err is ErrJobNotFound, also for a job of another owner, so that
// an ID tells nothing about who owns it), not finished
// (ErrJobNotFinished) or not succeeded (ErrJobNotSucceeded).
type InputFromError struct {
	Job string
	Msg string
	Err error
}

func (e *InputFromError) Error() string { return "inputs_from: " + e.Msg }

// Unwrap returns the kind of refusal.
func (e *InputFromError) Unwrap() error { return e.Err }

// MaxGlobBytes bounds an inputs_from glob.
const MaxGlobBytes = 1024

// ParseInputFrom reads the CLI's JOB[:GLOB]. Job IDs hold no ":", so the
// first one ends the ID.
func ParseInputFrom(s string) (InputFrom, error) {
	id, glob, hasGlob := strings.Cut(s, ":")
	f := InputFrom{Job: id, Glob: glob}
	if hasGlob && glob == "" {
		return f, &FieldError{Field: "inputs_from", Msg: fmt.Sprintf("%q has an empty glob after the colon (give JOB for all outputs, or JOB:GLOB)", s)}
	}
	if err := CheckInputsFrom([]InputFrom{f}); err != nil {
		return f, err
	}
	return f, nil
}

// CheckInputsFrom checks each entry's job ID and glob without touching
// any service.
func CheckInputsFrom(from []InputFrom) error {
	for _, f := range from {
		if err := CheckJobID(f.Job); err != nil {
			return &FieldError{Field: "inputs_from", Msg: err.Error()}
		}
		if err := checkGlob(f.Glob); err != nil {
			return err
		}
	}
	return nil
}

func checkGlob(g string) error {
	bad := func(msg string) error {
		return &FieldError{Field: "inputs_from", Msg: fmt.Sprintf("glob %q %s", g, msg)}
	}
	switch {
	case g == "":
		return nil
	case len(g) > MaxGlobBytes:
		return &FieldError{Field: "inputs_from", Msg: fmt.Sprintf("glob of %d bytes is over the maximum of %d", len(g), MaxGlobBytes)}
	case !utf8.ValidString(g):
		return bad("is not valid UTF-8")
	case strings.ContainsRune(g, 0):
		return bad("contains NUL")
	case strings.HasPrefix(g, "/"):
		return bad("is absolute; outputs' paths are relative, as the result lists them")
	}
	// path.Match checks the whole pattern's syntax even when the name
	// does not match.
	if _, err := path.Match(g, ""); err != nil {
		return bad("is not a valid pattern (path.Match syntax: * ? [a-z] and \\ to escape)")
	}
	return nil
}

// copySource is one output to copy as an input.
type copySource struct {
	out  OutputDoc
	from InputOrigin
}

// AddInputsFrom copies outputs of finished jobs of the draft's owner (the
// same tenant; "" for direct producers) as inputs, inside the store. Every
// entry is resolved and checked first: its job found, finished and
// succeeded, its glob matching at least one output, every name free
// (against the inputs added so far too) and the inputs' count and bytes
// within the caps. Only then are the files copied, several at a time,
// under the draft's prefix: Abort removes them. Each input carries the
// output's sha256, which the worker checks when it fetches it, and its
// origin, which the job's result records. The same output asked for twice
// is copied once, and each job is read once; the count is checked after
// each entry, so a long list stops at the cap.
func (d *Draft) AddInputsFrom(ctx context.Context, from []InputFrom) error {
	if len(from) == 0 {
		return nil
	}
	if err := CheckInputsFrom(from); err != nil {
		return err
	}
	var srcs []copySource
	seen := map[InputOrigin]bool{}
	read := map[string][]OutputDoc{} // each job's outputs, read once
	for _, f := range from {
		outs, ok := read[f.Job]
		if !ok {
			var err error
			if outs, err = d.c.outputsOf(ctx, d.job.Tenant, f.Job); err != nil {
				return err
			}
			read[f.Job] = outs
		}
		n := 0
		for _, o := range outs {
			if f.Glob != "" {
				if ok, _ := path.Match(f.Glob, o.Path); !ok {
					continue
				}
			}
			n++
			origin := InputOrigin{Job: f.Job, Path: o.Path}
			if seen[origin] {
				continue
			}
			seen[origin] = true
			if !strings.HasPrefix(o.Key, JobPrefix(f.Job)) {
				return fmt.Errorf("inputs_from: output %s of job %s is stored at %q, outside the job's prefix", o.Path, f.Job, o.Key)
			}
			srcs = append(srcs, copySource{out: o, from: origin})
		}
		switch {
		case len(outs) == 0:
			return &FieldError{Field: "inputs_from", Msg: fmt.Sprintf("job %s has no outputs", f.Job)}
		case n == 0:
			return &FieldError{Field: "inputs_from", Msg: fmt.Sprintf("glob %q matches none of the %d outputs of job %s (%s); \"*\" does not cross \"/\"", f.Glob, len(outs), f.Job, someOutputs(outs))}
		}
		// Refused as soon as the count is over, before the next job is read.
		if len(d.names)+len(srcs) > d.c.cfg.MaxInputs {
			return d.c.tooManyInputs(len(d.names) + len(srcs))
		}
	}
	names := d.names[:len(d.names):len(d.names)]
	total := d.total
	for _, s := range srcs {
		names = append(names, s.out.Path)
		if err := d.c.checkInputSize(s.out.Path, s.out.Size, total); err != nil {
			return err
		}
		total += s.out.Size
	}
	if err := CheckNames("inputs", names); err != nil {
		return err
	}
	refs := make([]FileRef, len(srcs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(Transfers)
	d.uploads = true
	for i, s := range srcs {
		g.Go(func() error {
			dst := d.job.UploadPrefix + "inputs/" + s.out.Path
			obj, err := d.c.store.Copy(gctx, s.out.Key, dst, s.out.Size, storage.PutOptions{ContentType: "application/octet-stream"})
			if errors.Is(err, storage.ErrObjectNotExist) || errors.Is(err, storage.ErrSizeMismatch) {
				return &InputFromError{Job: s.from.Job, Err: ErrJobNotFound,
					Msg: fmt.Sprintf("output %s of job %s is no longer in the store as the job's result lists it (expired or removed): %v", s.out.Path, s.from.Job, err)}
			}
			if err != nil {
				return fmt.Errorf("inputs_from: copy output %s of job %s: %w", s.out.Path, s.from.Job, err)
			}
			origin := s.from
			refs[i] = FileRef{Name: s.out.Path, Key: obj.Key, Size: obj.Size, SHA256: s.out.SHA256, From: &origin}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	d.job.Inputs = append(d.job.Inputs, refs...)
	d.names = names
	d.total = total
	return nil
}

// outputsOf returns the outputs of a finished, succeeded job of tenant:
// the result's list, or the whole list from its manifest when the result
// was trimmed.
func (c *Client) outputsOf(ctx context.Context, tenant, id string) ([]OutputDoc, error) {
	st, err := c.status(ctx, id, &tenant)
	if errors.Is(err, ErrJobNotFound) {
		return nil, &InputFromError{Job: id, Err: ErrJobNotFound, Msg: fmt.Sprintf("no job %s", id)}
	}
	if err != nil {
		return nil, fmt.Errorf("inputs_from: job %s: %w", id, err)
	}
	if st.State != StateDone {
		return nil, &InputFromError{Job: id, Err: ErrJobNotFinished,
			Msg: fmt.Sprintf("job %s is not finished (it is %s); wait for it to end (sandq wait %s) and submit again", id, st.State, id)}
	}
	if r := st.Result; !r.Status.Succeeded() {
		msg := fmt.Sprintf("job %s ended %s", id, r.Status)
		if r.ExitCode != nil {
			msg += fmt.Sprintf(" (exit code %d)", *r.ExitCode)
		}
		return nil, &InputFromError{Job: id, Err: ErrJobNotSucceeded, Msg: msg + "; only a succeeded job's outputs can be a job's inputs"}
	}
	r := st.Result
	if r.Trimmed == nil || r.Trimmed.Outputs == 0 {
		return r.Outputs, nil
	}
	if r.Trimmed.Manifest == nil {
		return nil, fmt.Errorf("inputs_from: job %s's result lists only some of its outputs and links no manifest of the others", id)
	}
	b, err := c.store.Read(ctx, r.Trimmed.Manifest.Key, maxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("inputs_from: the manifest of job %s: %w", id, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("inputs_from: the manifest of job %s: %w", id, err)
	}
	return m.Outputs, nil
}

// someOutputs names a few outputs, for a glob that matched none.
func someOutputs(outs []OutputDoc) string {
	const shown = 5
	var names []string
	for i, o := range outs {
		if i == shown {
			names = append(names, fmt.Sprintf("and %d more", len(outs)-shown))
			break
		}
		names = append(names, fmt.Sprintf("%q", o.Path))
	}
	return strings.Join(names, ", ")
}

// InputDoc is one of a job's inputs as its result records it. From is
// set for an input copied from another job's output.
type InputDoc struct {
	Name   string       `json:"name"`
	Size   int64        `json:"size"`
	SHA256 string       `json:"sha256"`
	From   *InputOrigin `json:"from,omitempty"`
}

// InputDocs is the result's account of a job's inputs.
func InputDocs(j *Job) []InputDoc {
	docs := make([]InputDoc, len(j.Inputs))
	for i, in := range j.Inputs {
		docs[i] = InputDoc{Name: in.Name, Size: in.Size, SHA256: in.SHA256, From: in.From}
	}
	return docs
}
