package executor

// Files a snapshot launcher uses, in JobDir (JobMount inside).
const (
	// SnapshotLauncherFile is the launcher, the one program a template
	// sandbox runs. It is written into every restored job's JobDir as well,
	// so the path the restored interpreter started from exists there too.
	SnapshotLauncherFile = ".sandq-snapshot.py"
	// SnapshotRequestFile is a restored job's request: its argv, whole
	// environment and working directory. The launcher waits for it.
	SnapshotRequestFile = ".sandq-request.json"
	// snapshotReadyLine is what the launcher writes to stdout once the
	// preloaded modules are in and it waits for a request.
	snapshotReadyLine = "sandq-template-ready"
)

// snapshotLauncher is the launcher's source. Its arguments are the
// modules to preload. It imports them (matplotlib with the Agg backend),
// removes what importing wrote under the scratch directories (/tmp,
// /var/tmp, /dev/shm and $HOME), says it is ready on stdout and waits,
// polling, for the request file. No job code runs until then, so none
// runs in a template.
//
// Restored into a job's sandbox, it finds that job's request, re-seeds what
// every restore would otherwise share (random's and numpy's global
// generators, tempfile's name sequence and directory), takes the job's
// environment, working directory and argv, and runs the script in the
// process's own __main__ module as `python3 SCRIPT ARGS...` would: a
// SystemExit ends the process as it would there, an uncaught exception
// prints its traceback (from the script's first frame on) and exits 1, and
// the interpreter's shutdown (threads, atexit, flushing) is the usual one.
const snapshotLauncher = `# The sandq snapshot launcher; see executor/snapshot_launcher.go.
import os
import sys


def _sandq_scratch_listing(dirs):
    seen = set()
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            for name in subdirs + files:
                seen.add(os.path.join(root, name))
    return seen


def _sandq_launch(main_globals, base):
    # Local names only: the module's globals become the job's.
    import json
    import os
    import sys
    import time

    request_path = "/mnt/job/` + SnapshotRequestFile + `"
    scratch = [d for d in ("/tmp", "/var/tmp", "/dev/shm", os.environ.get("HOME", "")) if d and d != "/"]
    before = _sandq_scratch_listing(scratch)
    for name in sys.argv[1:]:
        if name == "matplotlib":
            import matplotlib
            matplotlib.use("Agg")
        else:
            __import__(name)
    # What importing wrote (caches, temporary files) goes: a restored job
    # finds the image's files there, as a cold one does.
    for path in sorted(_sandq_scratch_listing(scratch) - before, key=len, reverse=True):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass
    import gc
    gc.collect()
    os.write(1, b"` + snapshotReadyLine + `\n")

    # The wait point: the template is checkpointed here. Restored, the job
    # mount is the job's directory, where the request is written when the
    # job is to start. Polling every 2ms costs about a tenth of a core, so
    # it slows to every 20ms a second after the last restore (seen as a gap
    # in the wall clock), when the job is not coming at once.
    last = time.time()
    fast_until = last + 1.0
    while True:
        try:
            with open(request_path, "rb") as f:
                request = json.loads(f.read())
            break
        except FileNotFoundError:
            now = time.time()
            if now - last > 1.0:
                fast_until = now + 1.0
            last = now
            time.sleep(0.002 if now < fast_until else 0.02)

    # Every restore starts from the same memory: what it seeded is seeded
    # again from fresh entropy.
    mod = sys.modules.get("random")
    if mod is not None:
        mod.seed()
    mod = sys.modules.get("numpy.random")
    if mod is not None:
        mod.seed()
    mod = sys.modules.get("tempfile")
    if mod is not None:
        mod._name_sequence = None
        mod.tempdir = None

    os.environ.clear()
    for kv in request["env"]:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    time.tzset()
    os.chdir(request["cwd"])
    argv = request["argv"]
    script = argv[1]
    sys.argv = argv[1:]
    sys.orig_argv = list(argv)
    sys.path[0] = os.path.dirname(script)
    del request, mod, before, scratch, last, fast_until

    try:
        with open(script, "rb") as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n" % (argv[0], script, e.errno, e.strerror))
        raise SystemExit(2)
    from importlib.machinery import SourceFileLoader

    main_globals.clear()
    main_globals.update(base)
    main_globals["__file__"] = script
    main_globals["__loader__"] = SourceFileLoader("__main__", script)
    code = None
    try:
        code = compile(source, script, "exec", dont_inherit=True)
        del source
        exec(code, main_globals)
    except SystemExit:
        raise
    except BaseException as e:
        # The traceback a cold interpreter prints starts at the script.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:
            tb = tb.tb_next
        e.__traceback__ = tb
        sys.excepthook(type(e), e, tb)
        del e, tb
        raise SystemExit(1)


_sandq_launch(globals(), {k: v for k, v in globals().items() if k.startswith("__")})
`
