package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// resultSlack is the room capResult leaves under the cap.
const resultSlack = 1 << 10

// capResult bounds the result of a job that ran to the worker's result
// size cap. Over it, the whole lists go to a manifest object under the
// run's prefix first, linked from the result, so nothing of a legitimate
// job with thousands of outputs is lost; then the result's lists are cut.
func (h *Handler) capResult(ctx context.Context, res *jobs.Result, prefix string) error {
	// Room for what is written after (the upload timings), so that
	// writeResult never has to cut a result that has no manifest.
	limit := h.cfg.MaxResultBytes - resultSlack
	size := jobs.JSONSize(res)
	if h.cfg.MaxResultBytes <= 0 || size <= limit {
		return nil
	}
	m := jobs.Manifest{ID: res.ID, Outputs: res.Outputs, SkippedOutputs: res.SkippedOutputs, SkippedOutputsOmitted: res.SkippedOutputsOmitted, Inputs: res.Inputs}
	if m.SkippedOutputs == nil {
		m.SkippedOutputs = []jobs.SkippedDoc{}
	}
	if res.Egress != nil {
		m.EgressRequests = res.Egress.Requests
		m.EgressDestinations = res.Egress.Destinations
		m.EgressRefusals = res.Egress.Refusals
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("result manifest: %w", err)
	}
	key := prefix + jobs.ManifestName
	const ctype = "application/json"
	if _, err := h.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)), storage.PutOptions{ContentType: ctype}); err != nil {
		return fmt.Errorf("upload the result manifest: %w", err)
	}
	link, err := h.store.Presign(ctx, key, h.cfg.LinkExpiry, storage.LinkOptions{ContentType: ctype})
	if err != nil {
		return fmt.Errorf("link the result manifest: %w", err)
	}
	res.Trimmed = &jobs.TrimmedDoc{
		Reason:   fmt.Sprintf("the result document was %d bytes, over the worker's cap of %d: lists were cut from their end; the manifest has them whole", size, h.cfg.MaxResultBytes),
		Manifest: &jobs.ManifestRef{URL: link.URL, ExpiresAt: link.ExpiresAt, Key: key},
	}
	jobs.FitResult(res, limit)
	res.Trimmed.MaxBytes = h.cfg.MaxResultBytes
	return nil
}
