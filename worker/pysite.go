package worker

import (
	"os"
	"path"
	"path/filepath"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
)

// pythonSiteDir is a directory beside every job's script, first on its
// PYTHONPATH, holding pythonSitecustomize.
var pythonSiteDir = jobs.ReservedPrefix + "site"

// pythonSitePath is pythonSiteDir inside the sandbox.
var pythonSitePath = path.Join(executor.JobMount, pythonSiteDir)

// pythonSitecustomize flushes a Python job's stdout and stderr every 100
// ms from a thread of its own. On a pipe Python's stdout is block-buffered,
// so a job's output would reach its followers (sandq logs --follow) only in
// 8 KiB blocks or at its end. A write per line costs too much in a sandbox
// (a system call each: 100,000 prints took 26-28 s unbuffered against 0.1-
// 0.2 s buffered), and Python's -u (PYTHONUNBUFFERED) also drops the rest
// of a write that a pipe takes only part of, as gVisor's host pipes do.
// Interactive kernels flush so too. A fork waits for a flush under way
// (the flush's lock is taken around it), and the child flushes on a thread
// of its own. At exit the flushing stops before the interpreter's own last
// flush, which would otherwise abort when the thread holds a stream's lock.
// It then runs the image's own sitecustomize, which this one
// shadows; a snapshot-restored job's launcher runs this one too (see the
// executor's snapshot launcher), after the image's.
const pythonSitecustomize = `# Written by sandq beside the job's script: stdout and stderr are flushed
# every 100 ms, so the job's output can be followed as it runs. See sandq's
# docs/jobs.md.
import sys


def _sandq_flush_output():
    import atexit, os, threading, time
    state = {"lock": threading.Lock(), "stopped": False}

    def flush():
        while True:
            time.sleep(0.1)
            with state["lock"]:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        if stream is not None:
                            stream.flush()
                    except Exception:
                        pass

    def start():
        threading.Thread(target=flush, name="sandq-output-flush", daemon=True).start()

    def before_fork():
        if not state["stopped"]:
            state["lock"].acquire()

    def after_in_parent():
        if not state["stopped"]:
            state["lock"].release()

    def in_child():
        state["lock"] = threading.Lock()
        state["stopped"] = False
        start()

    def stop():
        # At exit the interpreter flushes stdout and stderr itself, but
        # waits only 1 s for a lock a daemon thread holds, and a daemon
        # thread that got a stream's lock and not yet the GIL when the
        # interpreter began to finalize never lets it go: "Fatal Python
        # error: _enter_buffered_busy", exit 134. So the last flush of
        # this thread ends first, and no other begins.
        # (A fork after this, from a later exit handler, goes on without
        # the lock, which stays held.)
        state["lock"].acquire()
        state["stopped"] = True

    os.register_at_fork(before=before_fork, after_in_parent=after_in_parent, after_in_child=in_child)
    atexit.register(stop)
    start()


def _sandq_image_sitecustomize():
    # Restored from a snapshot, the interpreter ran the image's own as it
    # started, and this one runs after it.
    first = sys.modules.get("sitecustomize")
    if first is not None and getattr(first, "__file__", None) != __file__:
        return
    import importlib.machinery, importlib.util, os
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_sandq_flush_output()
_sandq_image_sitecustomize()
del _sandq_flush_output, _sandq_image_sitecustomize
`

// writePythonSite puts pythonSitecustomize in the job directory.
func writePythonSite(jobDir string) error {
	dir := filepath.Join(jobDir, pythonSiteDir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sitecustomize.py"), []byte(pythonSitecustomize), 0o644)
}
