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
// SystemExit ends the process with its status (a message printed to stderr
// as there), an uncaught exception prints its traceback (from the script's
// first frame on) and exits 1.
//
// It then ends the process the way the interpreter's shutdown would, in
// its order, for everything a job can observe: it waits for the job's
// non-daemon threads, runs the atexit handlers (the job's own, logging's
// shutdown, weakref finalizers, multiprocessing's), flushes sys.stdout and
// sys.stderr (a failed stdout flush exits 120, as there), flushes the files
// the job opened for writing (with open or io.open) and left open, and
// calls the C library's exit, which runs C-level atexit handlers and
// flushes C stdio buffers. What it skips is the teardown of every module:
// in a restored process that touches the template's whole memory, paging it
// in, and took about 0.6 s for an analysis template against 0.07 s without
// it (measured on a 2-core VM); the only thing lost is __del__ of objects
// still alive at exit, which Python does not promise to call.
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
    # The C library's exit, for the end (see _sandq_finish); loaded now so
    # that no job pays for it.
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        c_exit, c_fflush = libc.exit, libc.fflush
        c_exit.argtypes, c_fflush.argtypes = [ctypes.c_int], [ctypes.c_void_p]
        c_stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        del libc
    except Exception:
        c_exit = c_fflush = c_stdout = None
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
    # A cold interpreter imports the first sitecustomize on its path as it
    # starts. The template imported one before its job directory became
    # the job's: one that the job's PYTHONPATH holds now (the worker puts
    # one in the job directory) is run here, as a cold start would have.
    import importlib.machinery, importlib.util
    site_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # A directory missing when the template started is cached as having no
    # finder.
    for missing in [p for p in site_path if sys.path_importer_cache.get(p, False) is None]:
        del sys.path_importer_cache[missing]
    site_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", site_path) if site_path else None
    if site_spec is not None and site_spec.origin != getattr(sys.modules.get("sitecustomize"), "__file__", None):
        site_spec.loader.exec_module(importlib.util.module_from_spec(site_spec))
    del site_path, site_spec
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

    # The module's globals are about to become the job's: what the end
    # needs is kept here.
    opened = _sandq_track_writes()
    exit_status, finish = _sandq_exit_status, _sandq_finish
    main_globals.clear()
    main_globals.update(base)
    main_globals["__file__"] = script
    main_globals["__loader__"] = SourceFileLoader("__main__", script)
    compiled = None
    failed = False
    try:
        compiled = compile(source, script, "exec", dont_inherit=True)
        del source
        exec(compiled, main_globals)
    except BaseException as e:
        failed = e
    # As the interpreter does once the script is over: stderr and stdout
    # are flushed; a script that ended by an exception (SystemExit or any
    # other) also has the C library's stdout flushed before the rest of
    # the shutdown.
    for stream in (sys.stderr, sys.stdout):
        try:
            stream.flush()
        except Exception:
            pass
    status = 0
    if failed is not False:
        if c_fflush is not None:
            c_fflush(c_stdout)
        if isinstance(failed, SystemExit):
            status = exit_status(failed)
        else:
            # The traceback a cold interpreter prints starts at the script.
            tb = failed.__traceback__
            while tb is not None and tb.tb_frame.f_code is not compiled:
                tb = tb.tb_next
            failed.__traceback__ = tb
            sys.excepthook(type(failed), failed, tb)
            del tb
            status = 1
    del failed
    finish(status, opened, c_exit)


def _sandq_track_writes():
    # open and io.open, as they are, remembering (weakly) what is opened
    # for writing, for _sandq_finish to flush.
    import builtins
    import io
    import weakref

    opened = weakref.WeakSet()
    real_open = io.open

    def open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        f = real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            try:
                opened.add(f)
            except TypeError:
                pass
        return f

    open.__doc__, open.__module__ = real_open.__doc__, "io"
    builtins.open = io.open = open
    return opened


def _sandq_exit_status(e):
    # What the interpreter does with a SystemExit that ends the program.
    import sys

    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code if -(1 << 31) <= code < (1 << 31) else -1
    try:
        sys.stderr.write(str(code) + "\n")
    except Exception:
        pass
    return 1


def _sandq_finish(status, opened, c_exit):
    # The interpreter's shutdown, up to the teardown of its modules (see
    # executor/snapshot_launcher.go), then the C library's exit.
    import os
    import sys

    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            if stream is sys.stdout and status == 0:
                status = 120
    for f in list(opened):
        try:
            if not f.closed:
                f.flush()
        except Exception:
            pass
    if c_exit is not None:
        c_exit(status)
    os._exit(status & 0xFF)


_sandq_launch(globals(), {k: v for k, v in globals().items() if k.startswith("__")})
`
