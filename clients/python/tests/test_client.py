"""Tests of the sandq client against a real `sandq serve`.

SANDQ_SERVER and SANDQ_TOKEN name the server and a tenant's token;
SANDQ_OTHER_TOKEN is another tenant's, SANDQ_SLOW_TOKEN one whose tenant
may make one request a second. test/e2e/python_test.go starts the server,
its workers and these tests (`make test`); without a server the tests that
need one are skipped, and that test fails on any skip.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sandq  # noqa: E402
from sandq import _files  # noqa: E402

SERVER = os.environ.get("SANDQ_SERVER")
TOKEN = os.environ.get("SANDQ_TOKEN")
OTHER_TOKEN = os.environ.get("SANDQ_OTHER_TOKEN")
SLOW_TOKEN = os.environ.get("SANDQ_SLOW_TOKEN")

needs_server = unittest.skipUnless(SERVER and TOKEN and OTHER_TOKEN and SLOW_TOKEN, "needs SANDQ_SERVER, SANDQ_TOKEN, SANDQ_OTHER_TOKEN and SANDQ_SLOW_TOKEN")

# Bytes no text handling would keep: every byte value, a lone CR, NULs.
BINARY = bytes(range(256)) * 4 + b"a\x00b\rc"

COPY_SCRIPT = b"""\
import hashlib, os, sys
os.makedirs('/mnt/outputs/nested/deeper', exist_ok=True)
for name in sorted(os.listdir('/mnt/inputs')):
    data = open('/mnt/inputs/' + name, 'rb').read()
    print(name, len(data), hashlib.sha256(data).hexdigest())
    open('/mnt/outputs/nested/deeper/' + name, 'wb').write(data)
open('/mnt/outputs/args.txt', 'w').write(' '.join(sys.argv[1:]) + '|' + os.environ.get('GREETING', ''))
"""


class CuttingProxy:
    """A TCP proxy on loopback to the server that cuts a connection in the
    middle of the `cut`-th log event of its answer: event streams that
    break mid-way, as behind a proxy that drops long connections."""

    MARK = b"\nevent: log\n"

    def __init__(self, server: str, cut: int) -> None:
        u = urllib.parse.urlsplit(server)
        self.target = (u.hostname, u.port)
        self.cut = cut
        self.connections = 0
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        s = socket.create_connection(self.target)

        def upstream():
            try:
                while True:
                    b = c.recv(65536)
                    if not b:
                        break
                    s.sendall(b)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        buf, sent = b"", 0
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                buf += b
                at = -1
                for _ in range(self.cut):
                    at = buf.find(self.MARK, at + 1)
                    if at < 0:
                        break
                if at >= 0:
                    # Halfway through the event's header: the client sees
                    # a broken event, never a whole one.
                    c.sendall(buf[sent:at + 8])
                    self.cuts += 1
                    break
                c.sendall(buf[sent:])
                sent = len(buf)
        except OSError:
            pass
        finally:
            for sock in (c, s):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class _LocalStore:
    """An HTTP server on 127.0.0.1 serving files by name, as the object
    store serves presigned links; it notes each path asked for."""

    def __init__(self, files):
        self.files = dict(files)
        self.asked = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                store.asked.append(path)
                body = store.files.get(path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class OfflineTest(unittest.TestCase):
    """What needs no server: documents read tolerantly, sizes, names, and
    run's download from a local store."""

    def test_unknown_fields_are_ignored(self):
        j = sandq.Job.from_dict({
            "id": "j1", "queue": "q", "state": "done", "a_field_from_the_future": {"x": 1},
            "result": {"id": "j1", "status": "succeeded", "exit_code": 0, "new_thing": [1],
                       "finished_at": "2026-12-05T17:09:41.123456789Z",
                       "stdout": {"tail": "hi\n", "bytes": 3, "extra": True},
                       "outputs": [{"path": "a.txt", "size": 1, "sha256": "00", "unknown": 1}]},
        })
        self.assertEqual(j.result.status, "succeeded")
        self.assertTrue(j.done and j.result.succeeded)
        self.assertEqual(j.result.outputs[0].path, "a.txt")
        self.assertEqual(j.result.stdout.tail, "hi\n")
        self.assertEqual(j.result.finished_at.microsecond, 123456)
        self.assertEqual(j.raw["a_field_from_the_future"], {"x": 1})

    def test_sizes(self):
        self.assertEqual(sandq.parse_size("512MiB", "memory"), 512 << 20)
        self.assertEqual(sandq.parse_size("4KB", "disk"), 4000)
        self.assertEqual(sandq.parse_size(1234, "disk"), 1234)
        with self.assertRaises(sandq.InvalidRequest) as cm:
            sandq.parse_size("lots", "memory")
        self.assertEqual(cm.exception.field, "memory")

    def test_sizes_as_the_cli_reads_them(self):
        # internal/bytesize.Parse: every unit it knows, case-sensitive;
        # plain numbers, fractions (cut to whole bytes), spaces.
        for s, want in [
            ("0", 0), ("5", 5), ("+5", 5), ("-0", 0), ("1.5", 1), ("1e3", 1000),
            ("5B", 5), ("5 B", 5), (" 5KiB\n", 5 << 10),
            ("5KiB", 5 << 10), ("5MiB", 5 << 20), ("5GiB", 5 << 30), ("5TiB", 5 << 40),
            ("5KB", 5000), ("5MB", 5 * 1000**2), ("5GB", 5 * 1000**3), ("5TB", 5 * 1000**4),
            ("5Ki", 5 << 10), ("5Mi", 5 << 20), ("5Gi", 5 << 30), ("5Ti", 5 << 40),
            ("5K", 5 << 10), ("5M", 5 << 20), ("5G", 5 << 30), ("5T", 5 << 40),
            ("1.5GiB", 3 << 29), ("1.5G", 3 << 29), ("0.5KB", 500), (".5K", 512), ("2.M", 2 << 20),
            ("1_000", 1000),
            ("4194304Ti", 1 << 62), (1 << 62, 1 << 62), (0, 0),
        ]:
            self.assertEqual(sandq.parse_size(s, "disk"), want, repr(s))
        for bad in [
            "", "   ", "-1", "-1KiB", "-0.5", -1,
            "5kib", "5KIB", "5kB", "5kb", "5k", "5b", "5mi", "5g", "5t",
            "KiB", "B", "5EiB", "5PB", "5 bytes", "5BB", "5KiBB", "5iB", "5 K B",
            "1__000", "_1", "1_", "0x10", "0x", "1e", "e3", ".", "1.2.3", "\u0663",
            "inf", "Infinity", "NaN", "1e400",
            "4194305Ti", "8EiB", (1 << 62) + 1, True, 1.5, [1],
        ]:
            with self.assertRaises(sandq.InvalidRequest, msg=repr(bad)) as cm:
                sandq.parse_size(bad, "disk")
            self.assertEqual(cm.exception.field, "disk", repr(bad))

    def test_run_downloads_outputs_listed_only_in_the_manifest(self):
        # A result over the server's size cap has had every output cut from
        # its list (trimmed.outputs counts them; jobs/resultcap.go) and
        # links a manifest of them all. run downloads them from it. Only
        # submit and wait are faked; the manifest and the outputs are
        # served by a local HTTP server, as presigned links would be.
        files = {"a.txt": b"alpha\n", "sub/b.bin": BINARY}
        with _LocalStore(files) as store, tempfile.TemporaryDirectory() as tmp:
            manifest = {"id": "j1", "outputs": [
                {"path": p, "size": len(b), "sha256": sha(b), "url": store.url(p)} for p, b in files.items()]}
            store.files["manifest.json"] = json.dumps(manifest).encode()
            done = sandq.Job.from_dict({"id": "j1", "state": "done", "result": {
                "id": "j1", "status": "succeeded", "exit_code": 0, "outputs": [],
                "trimmed": {"reason": "over the cap", "max_bytes": 65536, "outputs": 2,
                            "manifest": {"url": store.url("manifest.json")}}}})
            client = sandq.Client("http://127.0.0.1:1", "t")
            out = os.path.join(tmp, "out")
            with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}), \
                    mock.patch.object(client, "submit", return_value=sandq.Job(id="j1", state="pending")), \
                    mock.patch.object(client, "wait", return_value=done):
                job = client.run(("s.py", b"pass"), dir=out)
            self.assertEqual(sorted(job.files), ["a.txt", "sub/b.bin"])
            for p, b in files.items():
                with open(os.path.join(out, p), "rb") as f:
                    self.assertEqual(f.read(), b, p)
            self.assertEqual(sorted(store.asked), ["/a.txt", "/manifest.json", "/sub/b.bin"])

            # A result with no outputs at all: nothing is fetched, and no
            # directory is made.
            store.asked.clear()
            empty = sandq.Job.from_dict({"id": "j2", "state": "done", "result": {"id": "j2", "status": "succeeded", "outputs": []}})
            none = os.path.join(tmp, "none")
            with mock.patch.object(client, "submit", return_value=sandq.Job(id="j2", state="pending")), \
                    mock.patch.object(client, "wait", return_value=empty):
                job = client.run(("s.py", b"pass"), dir=none)
            self.assertEqual(job.files, {})
            self.assertFalse(os.path.exists(none))
            self.assertEqual(store.asked, [])

    def test_unsafe_names(self):
        for bad in ["", ".", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", "a\nb"]:
            with self.assertRaises(sandq.UnsafePath, msg=repr(bad)):
                _files.check_download_path(bad)
        with self.assertRaises(sandq.UnsafePath):
            _files.check_download_list(["a", "a/b"])
        with self.assertRaises(sandq.UnsafePath):
            _files.check_download_list(["a", "a"])
        _files.check_download_list(["a/b", "a/c", "d"])

    def test_multipart_streams_chunks(self):
        # A file of several chunks is sent as several pieces, never read
        # whole; the body parses back to the same parts.
        with tempfile.NamedTemporaryFile() as f:
            f.write(os.urandom(_files.CHUNK * 3 + 5))
            f.flush()
            src = _files.file_source("inputs", f.name)
            body = list(_files.multipart_body("B", b"{}", [("script", _files.file_source("script", ("s.py", b"print(1)"))), ("input", src)]))
            self.assertTrue(all(len(c) <= _files.CHUNK + 300 for c in body), [len(c) for c in body])
            whole = b"".join(body)
            f.seek(0)
            self.assertIn(f.read(), whole)
        self.assertTrue(whole.startswith(b'--B\r\nContent-Disposition: form-data; name="spec"'))
        self.assertTrue(whole.endswith(b"--B--\r\n"))

    def test_bad_file_names_refused_before_sending(self):
        with self.assertRaises(sandq.InvalidRequest) as cm:
            _files.file_source("inputs", ("a\r\nb.csv", b"x"))
        self.assertEqual(cm.exception.field, "inputs")

    def test_client_needs_server_and_token(self):
        with mock.patch.dict(os.environ, clear=True):
            with self.assertRaises(ValueError):
                sandq.Client("ftp://x", "t")
            with self.assertRaises(ValueError):
                sandq.Client("http://127.0.0.1:1", "")
            with self.assertRaises(ValueError):
                sandq.Client()
        with mock.patch.dict(os.environ, {"SANDQ_SERVER": "http://127.0.0.1:1/", "SANDQ_TOKEN": "t"}, clear=True):
            self.assertEqual(sandq.Client().server, "http://127.0.0.1:1")


@needs_server
class ServerTest(unittest.TestCase):
    """The client against the real server, workers and sandboxes."""

    def setUp(self):
        self.client = sandq.Client(SERVER, TOKEN)
        self.tmp = tempfile.mkdtemp(prefix="sandq-py-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def _copy_job(self, **kw):
        big = os.path.join(self.tmp, "big.bin")
        with open(big, "wb") as f:
            # 3 MiB in 64 KiB pieces: more than one chunk of the upload.
            for i in range(48):
                f.write(hashlib.sha256(str(i).encode()).digest() * 2048)
        inputs = [big, ("binary.dat", BINARY), ("from_file.txt", io.BytesIO(b"from a file object\n"))]
        job = self.client.submit(("copy.py", COPY_SCRIPT), inputs=inputs, args=["one", "two words"], env={"GREETING": "hej"}, timeout=120, **kw)
        with open(big, "rb") as f:
            return job, {"big.bin": f.read(), "binary.dat": BINARY, "from_file.txt": b"from a file object\n"}

    def test_submit_wait_download(self):
        job, want = self._copy_job(memory="512MiB", cpus=1)
        self.assertEqual(job.state, "pending")
        self.assertFalse(job.existing)
        self.assertEqual(job.tenant, "py")
        states = []
        done = self.client.wait(job, 180, on_state=lambda j: states.append(j.state))
        self.assertEqual(states[-1], "done")
        r = done.result
        self.assertEqual(r.status, "succeeded", r.stderr.tail if r.stderr else r)
        self.assertEqual(r.exit_code, 0)
        self.assertEqual(r.limits.memory_bytes, 512 << 20)
        self.assertEqual(r.limits.cpus, 1)
        for name, data in want.items():
            self.assertIn(f"{name} {len(data)} {sha(data)}", r.stdout.tail)

        out = os.path.join(self.tmp, "out")
        files = self.client.download(done, out)
        self.assertEqual(sorted(files), sorted(["args.txt"] + ["nested/deeper/" + n for n in want]))
        for name, data in want.items():
            with open(files["nested/deeper/" + name], "rb") as f:
                self.assertEqual(f.read(), data, name)
        with open(os.path.join(out, "args.txt")) as f:
            self.assertEqual(f.read(), "one two words|hej")
        # Nothing else: no temporary files left beside the outputs.
        left = sorted(os.path.relpath(os.path.join(d, n), out) for d, _, ns in os.walk(out) for n in ns)
        self.assertEqual(left, sorted(files))

        # get and list see the job; a second submission with the same
        # idempotency key finds it.
        self.assertEqual(self.client.get(job.id).result.status, "succeeded")
        self.assertIn(job.id, [j.id for j in self.client.iter_jobs(state="done")])

    def test_idempotency_key(self):
        key = "py-" + os.urandom(6).hex()
        a = self.client.submit(("a.sh", b"echo first"), idempotency_key=key)
        b = self.client.submit(("a.sh", b"echo second"), idempotency_key=key)
        self.assertEqual(a.id, b.id)
        self.assertFalse(a.existing)
        self.assertTrue(b.existing)
        self.client.wait(a, 120)

    def test_download_refuses_escapes_and_bad_bytes(self):
        job, _ = self._copy_job()
        done = self.client.wait(job, 180)
        self.assertEqual(done.result.status, "succeeded")
        target = os.path.join(self.tmp, "dl")

        def left():
            return sorted(os.path.relpath(os.path.join(d, n), self.tmp) for d, ds, ns in os.walk(self.tmp) for n in ns + ds)

        before = left()
        for bad in ["../escaped.txt", "/tmp/abs.txt", "nested/../../x"]:
            tampered = sandq.Job.from_dict(done.raw)
            tampered.result.outputs[0].path = bad
            with self.assertRaises(sandq.UnsafePath, msg=bad):
                self.client.download(tampered, target)
            self.assertEqual(left(), before, bad)

        # A directory on the way that is a symbolic link (to outside) is
        # refused, and nothing is written through it.
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(outside)
        os.makedirs(target)
        os.symlink(outside, os.path.join(target, "nested"))
        with self.assertRaises(sandq.UnsafePath):
            self.client.download(done, target)
        self.assertEqual(os.listdir(outside), [])
        # Outputs before the refused one are in place, whole and checked.
        self.assertEqual(sorted(os.listdir(target)), ["args.txt", "nested"])
        os.unlink(os.path.join(target, "nested"))
        os.unlink(os.path.join(target, "args.txt"))

        # Bytes that do not match the result's sha256: no file, and no
        # temporary file, is left.
        tampered = sandq.Job.from_dict(done.raw)
        o = next(o for o in tampered.result.outputs if o.path == "args.txt")
        o.sha256 = "0" * 64
        with self.assertRaises(sandq.ChecksumMismatch):
            self.client.download(tampered, target, include=lambda x: x.path == "args.txt")
        self.assertEqual(os.listdir(target), [])
        o.sha256, o.size = sha(b"one two words|hej"), o.size + 1
        with self.assertRaises(sandq.ChecksumMismatch):
            self.client.download(tampered, target, include=lambda x: x.path == "args.txt")
        self.assertEqual(os.listdir(target), [])

        # An existing file is replaced whole.
        with open(os.path.join(target, "args.txt"), "w") as f:
            f.write("stale and longer than the output")
        self.client.download(done, target, include=lambda x: x.path == "args.txt")
        with open(os.path.join(target, "args.txt")) as f:
            self.assertEqual(f.read(), "one two words|hej")

    def test_logs(self):
        script = b"import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.3)\n"
        job = self.client.submit(("count.py", script), timeout=60)
        events = list(self.client.logs(job, follow=True, timeout=180))
        text = "".join(e.data for e in events if e.stream == "stdout")
        self.assertEqual(text, "".join(f"line {i}\n" for i in range(5)))
        self.assertTrue(events[-1].end, events[-1])
        self.assertTrue(all(e.id for e in events))
        # The job is done when the stream ends, and the same output is
        # there to read again, from the start or after any event.
        self.assertEqual(self.client.get(job).state, "done")
        again = list(self.client.logs(job, follow=False))
        self.assertEqual([e.id for e in again], [e.id for e in events])
        after = list(self.client.logs(job, follow=False, after=events[1].id))
        self.assertEqual([e.id for e in after], [e.id for e in events[2:]])
        # wait delivers the same output to on_log.
        seen = []
        self.client.wait(job, 60, on_log=seen.append)
        self.assertEqual([e.id for e in seen], [e.id for e in events])

    def test_streams_reopen_where_they_broke(self):
        # Through a proxy that cuts every connection in its 10th log event,
        # the live output arrives whole, each event once and in order, over
        # connections resumed with Last-Event-ID; wait returns the result.
        script = b"import time\nfor i in range(100):\n    print('%03d' % i, 'x' * 96, flush=True)\n    time.sleep(0.05)\n"
        job = self.client.submit(("long.py", script), timeout=120)
        proxy = CuttingProxy(SERVER, 10)
        self.addCleanup(proxy.close)
        cut = sandq.Client(proxy.url, TOKEN)
        seen = []
        with self.assertLogs("sandq", "INFO") as logs:
            done = cut.wait(job, 180, on_log=seen.append)
        self.assertEqual(done.result.status, "succeeded")
        self.assertGreaterEqual(proxy.cuts, 2)
        self.assertTrue(any("reopening" in m for m in logs.output), logs.output)
        direct = list(self.client.logs(job, follow=False))
        self.assertEqual([(e.id, e.data) for e in seen], [(e.id, e.data) for e in direct])
        text = "".join(e.data for e in seen if e.stream == "stdout")
        self.assertEqual(text, "".join("%03d %s\n" % (i, "x" * 96) for i in range(100)))

    def test_cancel_and_wait_timeout(self):
        job = self.client.submit(("sleep.sh", b"echo started; sleep 300"), timeout=600)
        with self.assertRaises(sandq.WaitTimeout):
            self.client.wait(job, 2)
        # Cancel it once it runs.
        deadline = time.monotonic() + 120
        while self.client.get(job).state != "active":
            self.assertLess(time.monotonic(), deadline, "the job did not start")
            time.sleep(0.2)
        self.assertEqual(self.client.cancel(job), "signalled")
        done = self.client.wait(job, 120)
        self.assertEqual(done.result.status, "canceled")
        with self.assertRaises(sandq.Conflict) as cm:
            self.client.cancel(job)
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "job_finished"))

    def test_refused_spec_names_its_field(self):
        cases = [
            (dict(memory="1TiB"), 400, "invalid_spec", "memory"),
            (dict(env={"HTTP_PROXY": "x"}), 400, "invalid_spec", "env"),
            (dict(network=["no-such-group"]), 400, "invalid_spec", "network"),
            (dict(image="no-such-image"), 400, "invalid_spec", "image"),
            (dict(queue="not-mine"), 403, "forbidden", "queue"),
            (dict(inputs=[("../x.csv", b"1")]), 400, "invalid_spec", "inputs"),
        ]
        for kw, status, code, field in cases:
            with self.subTest(kw=kw):
                with self.assertRaises(sandq.Refused) as cm:
                    self.client.submit(("ok.sh", b"echo hi"), **kw)
                e = cm.exception
                self.assertEqual((e.status, e.code, e.field), (status, code, field), str(e))
                self.assertTrue(e.message)

    def test_refused_mid_upload(self):
        # A script over the server's cap (1 MiB) is refused while it
        # arrives: the answer, not a broken pipe, is what the caller gets.
        big = os.path.join(self.tmp, "big.py")
        with open(big, "wb") as f:
            f.write(b"#" * (4 << 20))
        with self.assertRaises(sandq.TooLarge) as cm:
            self.client.submit(big)
        e = cm.exception
        self.assertEqual((e.status, e.code, e.field), (413, "too_large", "script"), str(e))

    def test_other_tenants_job_is_not_found(self):
        job = self.client.submit(("mine.sh", b"echo mine > /mnt/outputs/mine.txt"), timeout=60)
        done = self.client.wait(job, 120)
        other = sandq.Client(SERVER, OTHER_TOKEN)
        for call in (lambda: other.get(job.id), lambda: other.cancel(job.id), lambda: other.wait(job.id, 30),
                     lambda: list(other.logs(job.id, follow=False)), lambda: other.download(job.id, self.tmp)):
            with self.assertRaises(sandq.NotFound) as cm:
                call()
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))
        # The same words as for a job that does not exist at all.
        with self.assertRaises(sandq.NotFound) as missing:
            other.get(str(uuid.uuid4()))
        with self.assertRaises(sandq.NotFound) as theirs:
            other.get(job.id)
        self.assertEqual(missing.exception.message, theirs.exception.message)
        self.assertNotIn(job.id, [j.id for j in other.iter_jobs()])
        # Nor may the other tenant take its outputs as inputs.
        with self.assertRaises(sandq.NotFound) as cm:
            other.submit(("x.sh", b"true"), inputs_from=[done])
        self.assertEqual(cm.exception.field, "inputs_from")

    def test_bad_token(self):
        with self.assertRaises(sandq.Unauthenticated) as cm:
            sandq.Client(SERVER, "sandq_" + "x" * 43).get(str(uuid.uuid4()))
        self.assertEqual(cm.exception.status, 401)

    def test_inputs_from_chain(self):
        step1 = self.client.run(("make.py", b"open('/mnt/outputs/data.csv','w').write('a,b\\n1,2\\n')\nopen('/mnt/outputs/notes.txt','w').write('x')\n"),
                                dir=os.path.join(self.tmp, "s1"), timeout=60)
        self.assertEqual(sorted(step1.files), ["data.csv", "notes.txt"])
        step2 = self.client.run(("use.sh", b"ls /mnt/inputs; cat /mnt/inputs/data.csv | wc -l > /mnt/outputs/rows.txt"),
                                inputs_from=[(step1, "*.csv")], dir=os.path.join(self.tmp, "s2"), timeout=60)
        self.assertEqual(step2.result.stdout.tail, "data.csv\n")
        with open(step2.files["rows.txt"]) as f:
            self.assertEqual(f.read().strip(), "2")
        self.assertEqual([i.get("from", {}).get("job") for i in step2.result.inputs], [step1.id])
        # A glob matching nothing refuses the submission.
        with self.assertRaises(sandq.Refused) as cm:
            self.client.submit(("use.sh", b"true"), inputs_from=[(step1, "*.xlsx")])
        self.assertEqual(cm.exception.field, "inputs_from")

    def test_run_raises_when_the_job_fails(self):
        with self.assertRaises(sandq.JobFailed) as cm:
            self.client.run(("fail.sh", b"echo partial > /mnt/outputs/partial.txt; echo bad >&2; exit 3"), dir=self.tmp, timeout=60)
        job = cm.exception.job
        self.assertEqual((job.result.status, job.result.exit_code), ("failed", 3))
        self.assertIn("bad", str(cm.exception))
        # What it wrote before failing is downloaded.
        with open(job.files["partial.txt"]) as f:
            self.assertEqual(f.read(), "partial\n")
        job = self.client.run(("fail.sh", b"exit 4"), check=False, timeout=60)
        self.assertEqual(job.result.exit_code, 4)

    def test_retry_after_is_honoured(self):
        # The slow tenant may make one request a second: a burst of
        # requests is answered 429 with Retry-After, which the client waits
        # out; without retries, the 429 is raised with its Retry-After.
        slow = sandq.Client(SERVER, SLOW_TOKEN)
        impatient = sandq.Client(SERVER, SLOW_TOKEN, max_retries=0)
        with self.assertRaises(sandq.RateLimited) as cm:
            for _ in range(5):
                impatient.list(limit=1)
        self.assertEqual((cm.exception.status, cm.exception.code), (429, "rate_limited"))
        self.assertGreater(cm.exception.retry_after, 0)
        with self.assertLogs("sandq", "INFO") as logs:
            for _ in range(3):
                slow.list(limit=1)
        self.assertTrue(any("rate_limited, HTTP 429" in m and "trying again" in m for m in logs.output), logs.output)


if __name__ == "__main__":
    unittest.main()
