"""tests/forkserver.py, the suite's fast `python` for the drivers' shell scripts: each command gives
what a real `python` gives (status, stdout, stderr with its traceback, argv, sys.path, stdin, the
environment, atexit), and a client killed takes its command with it."""
import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = """import atexit, os, sys
atexit.register(lambda: print("atexit ran"))
print(sys.argv, os.environ.get("X"), sys.stdin.read().upper())
print([p for p in sys.path if "site-packages" not in p and "python3" not in p][:3])
def f(how):
    if how == "raise":
        raise ValueError("boom")
    sys.exit(how if not how.isdigit() else int(how))
f(sys.argv[1])
"""


@pytest.fixture
def shim(fast_python):
    if fast_python is None:
        pytest.skip("the suite runs without the fork server (PYTHON or SASRECLLM_FORKSERVER=0 set)")
    return str(fast_python)


def both(shim, args, cwd, umask=-1, **env):
    """(real python's result, the fork server's) for the same command, input, environment and umask."""
    env = {**os.environ, **env}
    return [subprocess.run([py, *args], cwd=cwd, env=env, input="abc", capture_output=True, text=True, timeout=120,
                           umask=umask) for py in (sys.executable, shim)]


@pytest.mark.parametrize("how", ["0", "3", "raise", "a message"])
def test_a_script_module_or_code_runs_as_python_runs_it(shim, tmp_path, how):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "cmd.py").write_text(SCRIPT)
    (tmp_path / "cmd.py").write_text(SCRIPT)
    for args, env in (([str(tmp_path / "cmd.py"), how], {}), (["cmd.py", how, "x y"], {"X": "1"}),
                      (["-m", "pkg.cmd", how], {"PYTHONPATH": "/nowhere"}), (["-c", SCRIPT, how], {}),
                      (["gone.py"], {}), (["-m", "pkg.cmd", how], {"PYTHONSAFEPATH": "1"})):  # (no module from the cwd: not found)
        real, served = both(shim, args, tmp_path, **env)
        assert (served.returncode, served.stdout, served.stderr) == (real.returncode, real.stdout, real.stderr), args
    assert real.returncode == 1 and "No module named 'pkg'" in real.stderr  # the last: a failure compared too


@pytest.mark.parametrize("code", [
    "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",  # (a status of -15, not 241)
    "import threading, time; threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()",
    "import os; print(oct(os.umask(0)))",
    "f = open('left-open.txt', 'w'); f.write('hi')"])  # (flushed at the end)
def test_a_command_ends_as_python_ends_it(shim, tmp_path, code):
    real, served = both(shim, ["-c", code], tmp_path, umask=0o027)
    assert (served.returncode, served.stdout, served.stderr) == (real.returncode, real.stdout, real.stderr)
    if "left-open" in code:
        assert (tmp_path / "left-open.txt").read_text() == "hi"
        (tmp_path / "left-open.txt").unlink()
        assert both(shim, ["-c", code], tmp_path)[1].returncode == 0 and (tmp_path / "left-open.txt").read_text() == "hi"


def test_a_killed_client_takes_its_command_with_it(shim, tmp_path):
    client = subprocess.Popen([shim, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    pid = int(client.stdout.readline())
    os.kill(pid, 0)  # the command runs
    client.send_signal(signal.SIGKILL)
    client.wait()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the command {pid} outlived its client")
