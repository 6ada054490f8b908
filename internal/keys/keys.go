// Package keys names every Redis key and channel sandq writes beside
// asynq's own. asynq keeps its keys under "asynq:"; sandq's are all under
// "sandq:", and each is defined here and nowhere else, so that what sandq
// stores in Redis (and, in a Redis Cluster, which keys share a hash slot)
// is read from this one file.
//
// # Hash slots (Redis Cluster)
//
// A Redis Cluster refuses a transaction or script whose keys hash to
// different slots (CROSSSLOT). A key's slot is the hash of its hash tag,
// the part between the first { and the next }, or of the whole key when
// it has none. The keys sandq uses together carry one tag:
//
//   - {t:TENANT}: a tenant's job index (TenantJobs, TenantOpen,
//     TenantSeq) and its reservations in flight (Reservation). The index
//     is written in one transaction (ZADD to TenantJobs, DEL of the
//     Reservation). Tenant names are letters, digits, _ . - (the API's
//     auth config refuses others), so a name never holds a brace.
//
// Every other key is used alone (one command, or a script with one key:
// the API's RateLimit and Streams scripts), so its slot does not matter.
// asynq tags its own keys by queue ("asynq:{QUEUE}:..."). The
// CancelChannel and DoneChannel are pub/sub, which a cluster broadcasts to
// every node.
//
// Keys before the tags (sandq up to issue 15) were "sandq:tenant:T:jobs",
// "sandq:tenant:T:open", "sandq:tenant:T:seq" and
// "sandq:reserving:QUEUE:ID".
package keys

// Published by workers, read by producers (jobs.Client, the API): one hash
// per kind, a field per queue, a JSON value.
const (
	// Egress is the hash of queues' network policies (jobs.EgressConfig).
	Egress = "sandq:egress"
	// Images is the hash of the images each queue's workers run.
	Images = "sandq:images"
	// WebhookPolicy is the hash of what producers need to check webhook
	// URLs per queue (private addresses allowed, secrets configured).
	WebhookPolicy = "sandq:webhooks"
)

// CancelChannel is the pub/sub channel a cancelled job's ID is published
// on; the worker running it kills its sandbox.
const CancelChannel = "sandq:cancel"

// DoneChannel is the pub/sub channel a job's ID is published on once its
// final result is written, so that producers waiting for it (jobs.Client's
// Wait, the API's event streams) learn of it without polling. Pub/sub is
// at most once: a waiter also reads the job's state now and then.
const DoneChannel = "sandq:done"

// Cancel marks a job whose cancellation was asked for, for a worker that
// has yet to start it.
func Cancel(jobID string) string { return "sandq:cancel:" + jobID }

// WebhookLog is the list of a job's webhook delivery attempts (JSON).
func WebhookLog(jobID string) string { return "sandq:webhook:log:" + jobID }

// A tenant's jobs, beside asynq's own keys:
//
//	TenantJobs: sorted set of "queue id", scored by submission time: what
//	            the API lists
//	TenantOpen: set of "queue id" of unfinished jobs: what the cap on
//	            pending jobs counts
//	TenantSeq:  counter making TenantJobs' scores unique
//
// All of a tenant's keys share the hash tag {t:TENANT} (see the package
// comment).
func TenantJobs(tenant string) string { return tenantPrefix(tenant) + "jobs" }

// TenantOpen is the set of a tenant's unfinished jobs (see TenantJobs).
func TenantOpen(tenant string) string { return tenantPrefix(tenant) + "open" }

// TenantSeq is the sequence of a tenant's job index (see TenantJobs).
func TenantSeq(tenant string) string { return tenantPrefix(tenant) + "seq" }

// Reservation marks a tenant's submission still uploading; it lives as
// long as an upload may take (jobs.ReservationTTL). It shares the
// tenant's slot, as the index transaction deletes it.
func Reservation(tenant, queue, jobID string) string {
	return tenantPrefix(tenant) + "reserving:" + queue + ":" + jobID
}

// tenantPrefix is the start of a tenant's keys, with its hash tag.
func tenantPrefix(tenant string) string { return "sandq:{t:" + tenant + "}:" }

// ReplicaMarker is written right before a WAIT for replicas (see
// jobs.AwaitReplicas): a replica that has it has every earlier write.
const ReplicaMarker = "sandq:replicated"

// RateLimit is the API's request-rate state (GCRA) of a tenant.
func RateLimit(tenant string) string { return "sandq:ratelimit:" + tenant }

// Streams is the sorted set of a tenant's open event streams on the API
// (leases, scored by expiry).
func Streams(tenant string) string { return "sandq:streams:" + tenant }

// LiveLog is a job's live output: a Redis stream the worker running it
// appends stdout and stderr chunks to as they are written (jobs.LogEvent),
// capped in bytes per attempt, expiring with the job's result. Producers
// follow it with XREAD; the API serves it as "log" events.
func LiveLog(jobID string) string { return "sandq:live:" + jobID }
