package executor

import (
	"context"
	"errors"
	"sync"
)

// cleanupStack runs teardown steps in reverse order of registration. Each step
// is registered as its resource is made, so a failure half-way through
// set-up releases exactly what was made. Steps run under a context that is
// not cancelled with the job's, so a cancelled or timed-out job still tears
// down completely.
type cleanupStack struct {
	mu    sync.Mutex
	steps []cleanupStep
	done  bool
}

type cleanupStep struct {
	name string
	fn   func(ctx context.Context) error
}

// add registers fn to run at release.
func (c *cleanupStack) add(name string, fn func(ctx context.Context) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, cleanupStep{name, fn})
}

// release runs every step once, last first, and joins their errors.
func (c *cleanupStack) release(ctx context.Context) error {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return nil
	}
	c.done = true
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()

	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(ctx); err != nil {
			errs = append(errs, &cleanupError{step: steps[i].name, err: err})
		}
	}
	return errors.Join(errs...)
}

type cleanupError struct {
	step string
	err  error
}

func (e *cleanupError) Error() string { return "cleanup " + e.step + ": " + e.err.Error() }
func (e *cleanupError) Unwrap() error { return e.err }
