package multihost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// Sighting is a container a Watcher saw: on which host, which job (its tag
// variable), when created and when last certainly there.
type Sighting struct {
	Host, ID, Tag string
	Created       time.Time
	// Last is the start of the last poll that showed it.
	Last time.Time
}

// Watcher polls the runsc containers of hosts and records every one it
// sees, to tell whether two sandboxes of one job ever existed at once.
type Watcher struct {
	tagVar string
	mu     sync.Mutex
	hosts  []*Host
	seen   map[string]*Sighting
	polls  int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// watchInterval is how often a Watcher polls.
const watchInterval = 100 * time.Millisecond

// Watch starts polling hosts (those running at each poll) until Finish.
// A container's job is the value of tagVar in its environment.
func Watch(tagVar string, hosts ...*Host) *Watcher {
	w := &Watcher{tagVar: tagVar, hosts: hosts, seen: map[string]*Sighting{}, stop: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *Watcher) loop() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(watchInterval):
		}
		for _, h := range w.hosts {
			if !h.Alive() {
				continue
			}
			began := time.Now()
			list, err := h.Containers(context.Background())
			if err != nil {
				continue
			}
			w.mu.Lock()
			for _, c := range list {
				key := c.Root + "/" + c.ID
				s := w.seen[key]
				if s == nil {
					s = &Sighting{Host: h.Name, ID: c.ID, Created: c.Created}
					w.seen[key] = s
				}
				if s.Tag == "" {
					s.Tag = c.Env(w.tagVar)
				}
				s.Last = began
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.polls++
		w.mu.Unlock()
	}
}

// Finish stops polling.
func (w *Watcher) Finish() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// Polls is how many rounds of polls were made.
func (w *Watcher) Polls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polls
}

// Of lists the sightings of a tag, oldest first.
func (w *Watcher) Of(tag string) []*Sighting {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*Sighting
	for _, s := range w.seen {
		if s.Tag == tag {
			c := *s
			out = append(out, &c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// Overlaps lists the pairs of sandboxes of one job that certainly existed
// at once (the later was created before the earlier was last seen), for
// every tag seen.
func (w *Watcher) Overlaps() []string {
	w.mu.Lock()
	tags := map[string]bool{}
	for _, s := range w.seen {
		tags[s.Tag] = true
	}
	w.mu.Unlock()
	var out []string
	for tag := range tags {
		ss := w.Of(tag)
		for i := range ss {
			for j := i + 1; j < len(ss); j++ {
				if ss[j].Created.Before(ss[i].Last) {
					out = append(out, fmt.Sprintf("job %s: %s on %s (created %s, seen until %s) and %s on %s (created %s)", tag,
						ss[i].ID, ss[i].Host, ss[i].Created.Format(time.StampMilli), ss[i].Last.Format(time.StampMilli),
						ss[j].ID, ss[j].Host, ss[j].Created.Format(time.StampMilli)))
				}
			}
		}
	}
	return out
}

// Delivery is one webhook delivery a Receiver accepted.
type Delivery struct {
	ID     string // webhook-id
	Status jobs.Status
}

// Receiver receives webhooks on the bridge's address: it verifies each
// delivery's signature and keeps the webhook-ids and statuses per job.
type Receiver struct {
	srv   *http.Server
	ln    net.Listener
	mu    sync.Mutex
	byJob map[string][]Delivery
	bad   []string
}

// NewReceiver serves on addr (host:0 for a free port) with the signing
// secret; Close stops it.
func NewReceiver(addr, secret string) (*Receiver, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &Receiver{ln: ln, byJob: map[string][]Delivery{}}
	r.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := readAll(req)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err == nil {
			err = webhook.Verify([]string{secret}, req.Header, body, time.Now())
		}
		var res *jobs.Result
		if err == nil {
			res, err = jobs.ParseResult(body)
		}
		if err != nil {
			r.bad = append(r.bad, err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.byJob[res.ID] = append(r.byJob[res.ID], Delivery{ID: req.Header.Get("webhook-id"), Status: res.Status})
		w.WriteHeader(http.StatusNoContent)
	})}
	go r.srv.Serve(ln)
	return r, nil
}

// URL is where to send webhooks.
func (r *Receiver) URL() string { return "http://" + r.ln.Addr().String() + "/hook" }

// Deliveries are the deliveries of job id so far.
func (r *Receiver) Deliveries(id string) []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.byJob[id]...)
}

// Refused are the deliveries that failed verification.
func (r *Receiver) Refused() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// Close stops the receiver.
func (r *Receiver) Close() error { return r.srv.Close() }

// maxBody bounds a delivery's body.
const maxBody = 4 << 20

func readAll(req *http.Request) ([]byte, error) {
	return io.ReadAll(io.LimitReader(req.Body, maxBody))
}

// deliveryPoll is how often Check looks for a job's first delivery.
const deliveryPoll = 200 * time.Millisecond

// Check waits up to within for the first delivery of job id, then checks
// every delivery of it so far: each carries the one webhook-id msg_<id>
// and the result's status. It returns the distinct webhook-ids and the
// deliveries seen, and an error naming each departure.
func (r *Receiver) Check(id string, status jobs.Status, within time.Duration) (ids, deliveries int, err error) {
	var ds []Delivery
	for deadline := time.Now().Add(within); ; time.Sleep(deliveryPoll) {
		if ds = r.Deliveries(id); len(ds) > 0 || time.Now().After(deadline) {
			break
		}
	}
	distinct := map[string]bool{}
	var errs []error
	for _, d := range ds {
		distinct[d.ID] = true
		if d.Status != status {
			errs = append(errs, fmt.Errorf("job %s: a webhook said %s, the result %s", id, d.Status, status))
		}
	}
	if len(distinct) != 1 || !distinct["msg_"+id] {
		errs = append(errs, fmt.Errorf("job %s: webhook-ids %v, want exactly msg_%s", id, distinct, id))
	}
	return len(distinct), len(ds), errors.Join(errs...)
}
