// Package jobs is sandq's job model and its producer side.
//
// A job is a script, its input files, its limits, its network and its
// webhook (Submission, Job); it waits in Redis as an asynq task of type
// TypeRun until a worker (package worker) runs it and writes its Result.
// This package holds what both sides share and what producers use:
//
//   - the job spec and its checks (spec.go, task.go), the result document
//     (result.go, resultcap.go);
//   - the configuration of producers and workers (Config, EgressConfig,
//     WebhookConfig, MemoryBudget) and what workers publish in Redis for
//     producers to check jobs against (images, network policies, webhook
//     policies);
//   - the producer client: submitting with uploads (Client.Enqueue, or
//     Begin/Draft/Commit for streamed bodies), idempotency, status, wait,
//     cancel (client.go, submit.go), and tenants' job indexes (tenant.go).
//
// Every Redis key sandq writes beside asynq's is named in internal/keys.
// Nothing here runs a sandbox: the worker side is package worker.
package jobs
