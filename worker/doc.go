// Package worker is sandq's worker side: an asynq server that takes job
// tasks (jobs.TypeRun) from Redis and runs each in a fresh sandbox made by
// an executor.Runner, uploads what it left to the object store and writes
// its result; and a second server that delivers completion webhooks
// (package jobs/webhook) on their own queue.
//
// Handler.ProcessTask is a short sequence of named steps (process.go): it
// parses the job, applies this worker's limits and network policy, runs it
// (run.go: reserve memory, set up the sandbox, run with its output going
// live to the job's Redis stream (live.go), classify how it ended, upload)
// and ends the attempt in one of a few named ways: done, refuse,
// passOn, or failed, whose verdict (decide) is requeue, postpone, retry
// or giveUp. classify and decide are pure functions with unit tests; the
// handler's other paths are tested with a fake executor.Runner.
//
// Around the handler: the memory budget jobs reserve their memory limit
// from (budget.go), the cancel listener (cancel.go), the worker's
// Prometheus metrics (metrics.go) and its lifecycle (worker.go).
package worker
