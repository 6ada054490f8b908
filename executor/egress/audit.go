package egress

import (
	"slices"
	"time"
)

// Audit is a session's record of a job's traffic through the proxy.
//
// Its counts and totals cover every request of the job; only the list of
// single events is capped. When the list is full, refusals are what is left
// out of it: an allowed or failed request takes the place of the latest
// refusal listed, and whatever is not listed is still in the counts, in
// Destinations (requests that passed the policy) or in Refusals. So a job
// cannot hide a request that reached upstream behind a flood of refused
// ones.
type Audit struct {
	// Allowed, Refused and Failed count every request of the job, and
	// every connection refused before a request was read (Refused), listed
	// in Events or not.
	Allowed, Refused, Failed int64
	// BytesOut and BytesIn total the traffic exchanged with upstream by
	// the job's allowed and failed requests (see Event).
	BytesOut, BytesIn int64
	// Events lists requests one by one, at most Config.MaxEvents, in the
	// order they arrived. A tunnel is an event once it has closed.
	Events []Event
	// Unlisted counts the requests left out of Events.
	Unlisted int64
	// Destinations total, per host and port, every request that passed
	// the policy (allowed or failed), listed in Events or not: at most
	// Config.MaxDestinations entries, in the order first seen. Requests to
	// further destinations are added up in OtherDestinations.
	Destinations      []Destination
	OtherDestinations *Destination
	// Refusals total every refused request per host and port (host ""
	// for connections refused before a request was read), with the first
	// reason given; capped like Destinations, the rest in OtherRefusals.
	Refusals      []Refusal
	OtherRefusals *Refusal
}

// Destination totals a job's requests to one host and port that passed the
// policy. In Audit.OtherDestinations, Host is "" and Port 0, and
// Destinations counts the distinct destinations added up.
type Destination struct {
	Host              string
	Port              int
	Allowed, Failed   int64
	BytesOut, BytesIn int64
	// Destinations is 1 for one destination; in an "other" entry, how
	// many destinations it adds up.
	Destinations int64
}

// Refusal totals a job's refused requests to one host and port. In
// Audit.OtherRefusals, Host is "" and Port 0, Reason is empty, and
// Destinations counts the distinct destinations added up.
type Refusal struct {
	Host   string
	Port   int
	Count  int64
	Reason string // the first refusal's
	// Destinations is 1 for one destination; in an "other" entry, how
	// many destinations it adds up.
	Destinations int64
}

type hostPort struct {
	host string
	port int
}

// auditLog is a session's audit as it is built. The session's mutex guards
// it.
type auditLog struct {
	maxEvents, maxDests int

	a        Audit            // counts and totals; Events, Destinations and Refusals are built below
	events   []Event          // in the order they were recorded
	refused  int              // refusals in events
	dests    map[hostPort]int // index in destinations
	destList []Destination
	// otherDests and otherRefs remember which destinations went to the
	// "other" entries, up to a bound, so that they are counted once each
	// (past it, every request counts as a new destination).
	otherDests, otherRefs map[hostPort]bool
	refs                  map[hostPort]int
	refList               []Refusal
}

// otherMemory bounds how many destinations of an "other" entry are
// remembered to count distinct ones.
const otherMemory = 4096

func newAuditLog(maxEvents, maxDests int) *auditLog {
	return &auditLog{
		maxEvents: maxEvents, maxDests: maxDests,
		dests: map[hostPort]int{}, refs: map[hostPort]int{},
		otherDests: map[hostPort]bool{}, otherRefs: map[hostPort]bool{},
	}
}

// add records one event: it is always counted, and listed if there is
// room (see Audit).
func (l *auditLog) add(ev Event) {
	switch ev.Decision {
	case DecisionAllowed:
		l.a.Allowed++
	case DecisionFailed:
		l.a.Failed++
	default:
		l.a.Refused++
	}
	if ev.Decision == DecisionRefused {
		l.addRefusal(ev)
	} else {
		l.a.BytesOut += ev.BytesOut
		l.a.BytesIn += ev.BytesIn
		l.addDestination(ev)
	}

	switch {
	case len(l.events) < l.maxEvents:
	case ev.Decision == DecisionRefused || l.refused == 0:
		l.a.Unlisted++
		return
	default:
		// Full: the request that passed the policy takes the place of
		// the latest refusal listed.
		i := len(l.events) - 1
		for l.events[i].Decision != DecisionRefused {
			i--
		}
		l.events = slices.Delete(l.events, i, i+1)
		l.refused--
		l.a.Unlisted++
	}
	l.events = append(l.events, ev)
	if ev.Decision == DecisionRefused {
		l.refused++
	}
}

func (l *auditLog) addDestination(ev Event) {
	k := hostPort{ev.Host, ev.Port}
	var d *Destination
	if i, ok := l.dests[k]; ok {
		d = &l.destList[i]
	} else if len(l.destList) < l.maxDests {
		l.dests[k] = len(l.destList)
		l.destList = append(l.destList, Destination{Host: ev.Host, Port: ev.Port, Destinations: 1})
		d = &l.destList[len(l.destList)-1]
	} else {
		if l.a.OtherDestinations == nil {
			l.a.OtherDestinations = &Destination{}
		}
		d = l.a.OtherDestinations
		if !l.otherDests[k] {
			d.Destinations++
			if len(l.otherDests) < otherMemory {
				l.otherDests[k] = true
			}
		}
	}
	if ev.Decision == DecisionAllowed {
		d.Allowed++
	} else {
		d.Failed++
	}
	d.BytesOut += ev.BytesOut
	d.BytesIn += ev.BytesIn
}

func (l *auditLog) addRefusal(ev Event) {
	k := hostPort{ev.Host, ev.Port}
	if i, ok := l.refs[k]; ok {
		l.refList[i].Count++
		return
	}
	if len(l.refList) < l.maxDests {
		l.refs[k] = len(l.refList)
		l.refList = append(l.refList, Refusal{Host: ev.Host, Port: ev.Port, Count: 1, Reason: ev.Reason, Destinations: 1})
		return
	}
	if l.a.OtherRefusals == nil {
		l.a.OtherRefusals = &Refusal{}
	}
	o := l.a.OtherRefusals
	o.Count++
	if !l.otherRefs[k] {
		o.Destinations++
		if len(l.otherRefs) < otherMemory {
			l.otherRefs[k] = true
		}
	}
}

// snapshot is a copy of the audit so far.
func (l *auditLog) snapshot() Audit {
	a := l.a
	a.Events = slices.Clone(l.events)
	if a.Events == nil {
		a.Events = []Event{}
	}
	// Events are recorded when requests end (tunnels when they close);
	// the audit lists them in the order the requests arrived.
	slices.SortStableFunc(a.Events, func(x, y Event) int { return x.Time.Compare(y.Time) })
	a.Destinations = l.destList
	a.Refusals = l.refList
	// Events are sorted in a copy already; cloning them again is cheap.
	return cloneAudit(a)
}

// refusedConn is the event of a connection refused before any request.
func refusedConn(reason string) Event {
	return Event{Time: time.Now(), Decision: DecisionRefused, Reason: reason}
}
