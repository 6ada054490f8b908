package multihost

import (
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/jobs"
)

// resultPoll is how often WaitResult looks at the job's task.
const resultPoll = 200 * time.Millisecond

// WaitResult waits up to within until job id of queue is done (its task
// completed or archived) and returns the result its task holds: never the
// stand-in a client shows for a task archived without one, which is an
// error here, as is a job not done in time (naming its state).
func WaitResult(insp *asynq.Inspector, queue, id string, within time.Duration) (*jobs.Result, error) {
	last := ""
	for deadline := time.Now().Add(within); ; time.Sleep(resultPoll) {
		info, err := insp.GetTaskInfo(queue, id)
		if err == nil {
			last = fmt.Sprintf("%s (retried %d, last error %q)", info.State, info.Retried, info.LastErr)
			if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
				if len(info.Result) == 0 {
					return nil, fmt.Errorf("job %s ended %s without a result (last error %q)", id, info.State, info.LastErr)
				}
				r, err := jobs.ParseResult(info.Result)
				if err != nil {
					return nil, fmt.Errorf("job %s: result: %w", id, err)
				}
				return r, nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s not done after %s: %s", id, within, last)
		}
	}
}
