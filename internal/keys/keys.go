// Package keys names every Redis key and channel sandq writes beside
// asynq's own. asynq keeps its keys under "asynq:"; sandq's are all under
// "sandq:", and each is defined here and nowhere else, so that what sandq
// stores in Redis (and, in a Redis Cluster, which keys share a hash slot)
// is read from this one file.
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
func TenantJobs(tenant string) string { return "sandq:tenant:" + tenant + ":jobs" }

// TenantOpen is the set of a tenant's unfinished jobs (see TenantJobs).
func TenantOpen(tenant string) string { return "sandq:tenant:" + tenant + ":open" }

// TenantSeq is the sequence of a tenant's job index (see TenantJobs).
func TenantSeq(tenant string) string { return "sandq:tenant:" + tenant + ":seq" }

// Reservation marks a submission still uploading; it lives as long as an
// upload may take (jobs.ReservationTTL).
func Reservation(queue, jobID string) string { return "sandq:reserving:" + queue + ":" + jobID }

// RateLimit is the API's request-rate state (GCRA) of a tenant.
func RateLimit(tenant string) string { return "sandq:ratelimit:" + tenant }

// Streams is the sorted set of a tenant's open event streams on the API
// (leases, scored by expiry).
func Streams(tenant string) string { return "sandq:streams:" + tenant }
