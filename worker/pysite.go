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

// pythonSitecustomize line-buffers a Python job's stdout and stderr. On a
// pipe Python's stdout is block-buffered, so a job's output would reach its
// followers (sandq logs --follow) only in 8 KiB blocks or at its end.
// Python's -u (PYTHONUNBUFFERED) is no answer: its unbuffered text I/O
// drops the rest of a write that a pipe takes only part of, and gVisor's
// host pipes do take partial writes; a line-buffered stream flushes through
// its buffered writer, which writes the rest. It then runs the image's own
// sitecustomize, which this one shadows. A snapshot-restored job's launcher
// runs it too (executor's snapshot launcher).
const pythonSitecustomize = `# Written by sandq beside the job's script: line-buffered stdout and stderr,
# so the job's output can be followed live. See sandq's docs/jobs.md.
import sys
for _s in (sys.stdout, sys.stderr):
    try:
        _s.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
del _s


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


_sandq_image_sitecustomize()
del _sandq_image_sitecustomize
`

// writePythonSite puts pythonSitecustomize in the job directory.
func writePythonSite(jobDir string) error {
	dir := filepath.Join(jobDir, pythonSiteDir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sitecustomize.py"), []byte(pythonSitecustomize), 0o644)
}
