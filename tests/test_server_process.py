"""``serving.server.ServerProcess``, the handle ``atrx serve`` keeps on ``bentoml serve``, on real
process trees: a stop leaves no descendant behind, also one in a process group of its own (as
BentoML's workers are) under an arbiter that ignores SIGTERM, and a SIGTERM that the kernel hands
to another thread of the waiting process still stops the server at once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from process_tree import gone, kill_all

from serving.server import ServerProcess

#: an "arbiter" that ignores SIGTERM and starts a "worker" in a session of its own
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print("started", flush=True)
    time.sleep(120)
""")


def _start(code: str, tmp_path: Path) -> ServerProcess:
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=sink, start_new_session=True)
    deadline = time.monotonic() + 30
    while "started" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ServerProcess(process, "http://127.0.0.1:1")


def test_stop_kills_a_worker_in_its_own_group_under_a_stubborn_arbiter(tmp_path: Path) -> None:
    server = _start(STUBBORN, tmp_path)
    tree = psutil.Process(server.process.pid).children(recursive=True)
    try:
        (worker,) = tree
        assert os.getpgid(worker.pid) != server.process.pid  # the arbiter's group SIGKILL misses it
        server.stop(timeout=1.0)
        assert server.process.poll() is not None
        assert gone(worker)
    finally:  # a failure must not leave sleepers behind for the rest of the suite
        kill_all(tree)
        if server.process.poll() is None:
            server.process.kill()


def test_sigterm_to_another_thread_still_stops_the_wait(tmp_path: Path) -> None:
    """The handler ``atrx serve`` installs raises KeyboardInterrupt; here the SIGTERM goes to a
    helper thread (``pthread_kill``), so the main thread learns of it only by running bytecode."""
    script = tmp_path / "waiter.py"
    script.write_text(textwrap.dedent(f"""
        import signal, subprocess, sys, threading, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from serving.server import ServerProcess

        def terminate(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, terminate)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
        open({str(tmp_path / "child.pid")!r}, "w").write(str(child.pid))
        server = ServerProcess(child, "http://127.0.0.1:1")

        def poke():
            time.sleep(1.0)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            time.sleep(30)  # stays alive: the signal is this thread's, not the main thread's

        threading.Thread(target=poke, daemon=True).start()
        t0 = time.monotonic()
        code = server.wait()
        print(code, round(time.monotonic() - t0, 1), child.poll() is not None, flush=True)
    """))
    try:
        done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                              text=True, timeout=50)
        assert done.returncode == 0, done.stderr
        code, seconds, child_gone = done.stdout.split()
        assert code == "130" and child_gone == "True"
        assert float(seconds) < 15, f"the wait went on {seconds} s after the SIGTERM"
    finally:  # the child sleeps in a session of its own: a failure must not leave it behind
        pid_file = tmp_path / "child.pid"
        if pid_file.exists():
            with contextlib.suppress(psutil.NoSuchProcess):
                kill_all([psutil.Process(int(pid_file.read_text()))])
