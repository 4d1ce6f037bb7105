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

What differs from a fresh `python`: the children share the server's hash seed and its libgomp (read
OMP_NUM_THREADS at load: the child applies the command's own), and torch was imported before the
command's environment was known. Tests about the process itself (its environment, portable numerics,
determinism between processes) start a real `python`, not this.

    python tests/forkserver.py SOCKET     # the server: prints "ready" once it listens
    <client> ARGS...                      # the shim conftest.py writes: forkserver.client(SOCKET, python)
"""
import atexit
import importlib
import json
import os
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


def client(path, python):
    """Run this process's argv on the server at `path`; exit with the command's status. A server that is
    not listening within a minute (still importing torch, or gone): the real `python` runs the command."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(600):
        try:
            s.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    else:
        os.execv(python, [python, *sys.argv[1:]])
    req = json.dumps(dict(argv=sys.argv[1:], cwd=os.getcwd(), env=dict(os.environ))).encode()
    socket.send_fds(s, [len(req).to_bytes(8, "big")], [0, 1, 2])
    s.sendall(req)
    rc = b""
    while len(rc) < 4 and (got := s.recv(4 - len(rc))):
        rc += got
    sys.exit(int.from_bytes(rc, "big", signed=True) if len(rc) == 4 else 1)


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        if not (got := conn.recv(min(n - len(buf), 1 << 20))):
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
    """In the forked child: become the command, run it, and never return."""
    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if (n := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(n) > 0:
            import torch
            torch.set_num_threads(int(n))
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        argv = req["argv"]
        if not argv:
            raise SystemExit("forkserver: no command (an interactive python is not served)")
        kind = argv[0] if argv[0] in ("-m", "-c") else "script"
        first = {"-m": os.getcwd(), "-c": "", "script": os.path.dirname(os.path.abspath(argv[0]))}[kind]
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = ([] if os.environ.get("PYTHONSAFEPATH") else [first]) + extra + base_path
        try:
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
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
    finally:
        os._exit(code)


def start(conn, base_path):
    """Read one request and fork its child (in the main thread: a fork from a helper thread could leave the
    child a lock another thread held); None for a request that is not one."""
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    if len(head) != 8 or len(fds) != 3 or not 0 < (n := int.from_bytes(head, "big")) <= LIMIT:
        return None
    req = json.loads(recv_exact(conn, n))
    if (pid := os.fork()) == 0:
        conn.close()
        run_child(req, fds, base_path)
    for fd in fds:
        os.close(fd)
    return pid


def wait(conn, pid):
    """Send the child's status to its client; kill the child if the client goes away first."""
    with conn:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                conn.sendall(os.waitstatus_to_exitcode(status).to_bytes(4, "big", signed=True))
                return
            if select.select([conn], [], [], 0.05)[0] and not conn.recv(1):  # the client died
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return


def serve(path):
    for name in ("numpy", "torch", "torch._dynamo"):  # what every command imports: once, here
        importlib.import_module(name)
    mine = {p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    base_path = [p for p in sys.path[1:] if p not in mine]  # sys.path[0]: this file's folder
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        try:
            pid = start(conn, base_path)
        except (OSError, EOFError, ValueError):
            pid = None
        if pid is None:
            conn.close()
            continue
        threading.Thread(target=wait, args=(conn, pid), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])
