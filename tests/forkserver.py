"""Test machinery, not part of the lesson: a `python` for the drivers' shell scripts that starts in
milliseconds.

table.sh and lr_sweep.sh start `$PYTHON train.py ...` once per row, and the suite runs them dozens of
times. A fresh interpreter spends about 4 s of a test's CPU before any work: importing torch (~2 s) and
torch._dynamo (~1.7 s, which torch.optim's AdamW imports on its first param group). The suite points
PYTHON at a client of this server instead (conftest.py). The server imported torch, torch._dynamo and
numpy once and does nothing else (no torch op, no project module: those read the environment, and each
command brings its own). For each command it forks a child that takes the client's stdin, stdout,
stderr, working directory, environment and arguments, and runs `SCRIPT`, `-m MODULE` or `-c CODE` as
`python` would: sys.argv, sys.path (PYTHONPATH, PYTHONSAFEPATH), the exit status, a traceback for an
uncaught exception, atexit. The client exits with the child's status; a client that dies (a timeout's
kill) takes its child with it.

The child takes the client's umask, niceness and address-space limit too, ends as an interpreter does
(threads joined, atexit, files flushed; torch is not torn down), and dies with the server; SIGINT and SIGTERM to the client reach
it, and its status (a signal's too) is the client's. What differs from a fresh `python`: the children
share the server's hash seed and its libgomp (read OMP_NUM_THREADS at load: the child applies the
command's own), torch and torch._dynamo read their environment (TORCH_COMPILE_DISABLE...) before the
command's was known, and PYTHONWARNINGS is not applied. Tests about the process itself (its environment,
portable numerics, determinism between processes) start a real `python`, not this.

    python tests/forkserver.py SOCKET     # the server: prints "ready" once it listens
    <client> ARGS...                      # conftest.py's shim: forkserver.client(SOCKET, python, server pid)
"""
import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import os
import resource
import runpy
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types

LIMIT = 1 << 24  # bytes of one request (argv, cwd, environment)
OPEN = set()  # the server's sockets, which a child closes first


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def client(path, python, server):
    """Run this process's argv on the server at `path`; exit with the command's status. A closed stdin,
    stdout or stderr (the socket would take its number), or a server not listening within a minute (still
    importing torch, or gone): the real `python` runs the command."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(600):
            try:
                s.connect(path)
                break
            except OSError:
                if not alive(server):
                    raise
                time.sleep(0.1)
        else:
            raise OSError("no server")
    except OSError:
        os.execv(python, [python, *sys.argv[1:]])
    req = json.dumps(dict(argv=sys.argv[1:], cwd=os.getcwd(), env=dict(os.environ), umask=os.umask(0o22),
                          nice=os.getpriority(os.PRIO_PROCESS, 0), rlimit_as=resource.getrlimit(resource.RLIMIT_AS))
                     ).encode()
    socket.send_fds(s, [len(req).to_bytes(8, "big")], [0, 1, 2])
    s.sendall(req)
    got = recv_exact(s, 4, eof_ok=True)
    if len(got) == 4:  # the command's pid: a Ctrl-C or a timeout's SIGTERM to this client is its
        pid = int.from_bytes(got, "big")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda sig, _, pid=pid: os.kill(pid, sig))
        got = recv_exact(s, 4, eof_ok=True)
    s.close()
    if len(got) < 4:
        print("forkserver: the server ended before the command did", file=sys.stderr)
        sys.exit(1)
    if (rc := int.from_bytes(got, "big", signed=True)) < 0:  # killed by a signal: so is this client
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)


def recv_exact(conn, n, eof_ok=False):
    buf = bytearray()
    while len(buf) < n:
        if not (got := conn.recv(min(n - len(buf), 1 << 20))):
            if eof_ok:
                break
            raise EOFError("client went away")
        buf += got
    return bytes(buf)


def exit_code(e):
    """SystemExit's code as the interpreter turns it into a status."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def run_child(req, fds, base_path):
    """In the forked child: become the command, run it, and end as its interpreter would; never returns."""
    server_main = sys.modules["__main__"]
    try:
        for sock in list(OPEN):  # the server's sockets: not the command's (a client would wait on them)
            sock.close()
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with the server
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.umask(req["umask"])
        os.setpriority(os.PRIO_PROCESS, 0, req["nice"])
        resource.setrlimit(resource.RLIMIT_AS, tuple(req["rlimit_as"]))
        if (n := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(n) > 0:
            import torch
            torch.set_num_threads(int(n))
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        argv = req["argv"]
        kind = argv[0] if argv and argv[0] in ("-m", "-c") else "script"
        first = {"-m": os.getcwd(), "-c": "", "script": os.path.dirname(os.path.realpath(argv[0] if argv else "."))}
        extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)]  # ("": the cwd)
        sys.path[:] = ([] if os.environ.get("PYTHONSAFEPATH") else [first[kind]]) + extra * bool(
            os.environ.get("PYTHONPATH")) + base_path
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    try:
        if not argv:
            raise SystemExit("forkserver: no command (an interactive python is not served)")
        if kind == "-m":  # (in a __main__ of its own: runpy runs it in sys.modules["__main__"], this file's)
            sys.argv = [argv[1], *argv[2:]]
            sys.modules["__main__"] = types.ModuleType("__main__")
            runpy._run_module_as_main(argv[1], alter_argv=True)
        elif kind == "-c":
            sys.argv = ["-c", *argv[2:]]
            main = sys.modules["__main__"] = types.ModuleType("__main__")
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            sys.argv = list(argv)
            try:
                with open(argv[0], "rb") as f:
                    source = f.read()
            except OSError as e:
                print(f"{sys.executable}: can't open file {os.path.abspath(argv[0])!r}: [Errno {e.errno}] "
                      f"{e.strerror}", file=sys.stderr)
                raise SystemExit(2)
            main = sys.modules["__main__"] = types.ModuleType("__main__")
            main.__file__ = os.path.abspath(argv[0])
            exec(compile(source, main.__file__, "exec"), main.__dict__)
        code = 0
    except SystemExit as e:
        code = exit_code(e)
    except BaseException as e:  # the traceback `python` prints: from the command's frames on
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code is run_child.__code__:
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)  # (the hook prints e.__traceback__)
        if isinstance(e, KeyboardInterrupt):  # python then ends by SIGINT, as the shell expects
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        code = 1
    # python's ending, but for tearing torch down (~0.8 s a command): threads joined, atexit, the command's
    # globals dropped (a file it left open is flushed and closed), stdout and stderr flushed
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        if (main := sys.modules.get("__main__")) is not server_main:  # (this file, when no command module ran)
            main.__dict__.clear()
        gc.collect()
    except BaseException:
        traceback.print_exc()
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            f.flush()
    os._exit(code)


def read_request(conn):
    """(request, its three fds) from a client, or None (any fds it sent closed)."""
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    try:
        if len(head) == 8 and len(fds) == 3 and 0 < (n := int.from_bytes(head, "big")) <= LIMIT:
            return json.loads(recv_exact(conn, n)), fds
    except (OSError, EOFError, ValueError):
        pass
    for fd in fds:
        os.close(fd)
    return None


def wait(conn, pid):
    """Send the child's status to its client; kill the child if the client goes away first."""
    with conn:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with contextlib.suppress(OSError):
                    conn.sendall(os.waitstatus_to_exitcode(status).to_bytes(4, "big", signed=True))
                OPEN.discard(conn)
                return
            try:
                gone = select.select([conn], [], [], 0.05)[0] and not conn.recv(1)  # the client died
            except OSError:  # (ECONNRESET: so did it)
                gone = True
            if gone:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                OPEN.discard(conn)
                return


def serve(path):
    for name in ("numpy", "torch", "torch._dynamo"):  # what every command imports: once, here
        importlib.import_module(name)
    gc.freeze()  # what is imported now: never collected, so a child's collection at its end scans its own objects
    mine = {p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    base_path = [p for p in sys.path[1:] if p not in mine]  # sys.path[0]: this file's folder
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    OPEN.add(s)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        OPEN.add(conn)
        try:
            got = read_request(conn)
        except OSError:
            got = None
        if got is None:
            OPEN.discard(conn)
            conn.close()
            continue
        req, fds = got
        # Forked here, in the main thread: a fork from a helper thread could leave the child a lock another held.
        if (pid := os.fork()) == 0:
            run_child(req, fds, base_path)
        for fd in fds:  # (the child has its copies)
            os.close(fd)
        with contextlib.suppress(OSError):  # its pid, for the client's signals (a client gone: wait() ends it)
            conn.sendall(pid.to_bytes(4, "big"))
        threading.Thread(target=wait, args=(conn, pid), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])
