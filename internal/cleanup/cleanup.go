// Package cleanup is a stack of named teardown steps, after gVisor's
// pkg/cleanup: each step is added as its resource is made, so that a
// failure half-way through a set-up releases exactly what was made, last
// first, and a successful set-up keeps the same stack to tear down with
// later.
//
// The idiom, with a named error result:
//
//	func open(ctx context.Context) (_ *Thing, err error) {
//		t := &Thing{}
//		defer t.cleanup.ReleaseOnError(ctx, &err)
//		f, err := os.Create(path)
//		if err != nil {
//			return nil, err
//		}
//		t.cleanup.Add("file", func(context.Context) error { return f.Close() })
//		...
//		return t, nil
//	}
//
//	func (t *Thing) Close(ctx context.Context) error { return t.cleanup.Release(ctx) }
//
// Steps run under a context that is never cancelled (the caller's values
// are kept), so a cancelled or timed-out job still tears down completely.
package cleanup

import (
	"context"
	"errors"
	"sync"
)

// Stack runs teardown steps in reverse order of Add. Its zero value is an
// empty stack; it is safe for concurrent use, and it must not be copied
// after first use.
type Stack struct {
	mu    sync.Mutex
	steps []step
	done  bool
}

type step struct {
	name string
	fn   func(ctx context.Context) error
}

// Add registers fn, named name in errors, to run at Release. Steps added
// after Release never run.
func (s *Stack) Add(name string, fn func(ctx context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, step{name, fn})
}

// Release runs every step once, last added first, each whatever the
// others return, and joins their errors; each names its step ("cleanup
// name: ..."). Later calls do nothing and return nil.
func (s *Stack) Release(ctx context.Context) error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil
	}
	s.done = true
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()

	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(ctx); err != nil {
			errs = append(errs, &stepError{step: steps[i].name, err: err})
		}
	}
	return errors.Join(errs...)
}

// ReleaseOnError releases the stack when *errp is not nil, and joins what
// Release returns into *errp. Deferred with a pointer to a function's named
// error result, it unwinds a set-up that failed and leaves a successful
// one's stack armed for later.
func (s *Stack) ReleaseOnError(ctx context.Context, errp *error) {
	if *errp != nil {
		*errp = errors.Join(*errp, s.Release(ctx))
	}
}

type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return "cleanup " + e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }
