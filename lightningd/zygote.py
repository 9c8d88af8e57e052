"""A fork server for subdaemons: one interpreter with their modules imported, forked per start.

Starting `python -m openingd.openingd` costs a fresh interpreter and every import
(~0.2 s). Instead lightningd, before it opens anything, imports the subdaemon modules
and forks itself into this zygote (fork_zygote): lightningd, the zygote and every
subdaemon then share those pages rather than each holding its own interpreter. (A
process that cannot fork that early, a test say, posix_spawns one: start_zygote.)
The zygote says it is ready, then serves one request per subdaemon:

    request: JSON {"module", "args", "targets", "cwd", "env"}, with one descriptor
             attached per entry of "targets" (the number it must have in the child)
    reply:   JSON {"pid": n} or {"error": "..."}

Each subdaemon is forked before its request comes, as a spare: the zygote double-forks.
The intermediate process exits at once, so the grandchild is reparented to lightningd,
which marked itself a child subreaper (PR_SET_CHILD_SUBREAPER): lightningd reaps it with
os.waitpid() like any child. The zygote keeps the spare only once it has reaped the
intermediate (the reparenting is done by then) and has checked that lightningd is the
new parent. The spare waits for the reparenting before running anything, so that the
subdaemon's die_with_master() (PR_SET_PDEATHSIG) ties it to lightningd, not to the
short-lived intermediate; then, keeping only stdio and its socket to the zygote, it
waits for a request. A request is answered by sending it to the spare with its
descriptors and replying with the spare's pid. The next spare is forked once no request
has come for SPARE_AFTER_IDLE: a start waits for a fork only in a burst, as every start
did before spares (~3-4 ms). A spare exits when the zygote's end of its socket closes.

Given its request, the spare places its descriptors at their numbers, closes everything
else, restores the signal dispositions a fresh interpreter has, and runs the module as
`python -m module args` would (runpy). It never returns into the zygote's loop: every
way out is an os._exit.

The zygote itself dies with lightningd (PR_SET_PDEATHSIG=SIGKILL, and EOF on its socket).

The client side (fork_zygote, start_zygote, zygote_spawn) is used through lightningd/subd.py.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType

from setproctitle import setproctitle

from common.daemon_conn import DaemonConn, DaemonConnError

# What the zygote imports before it serves: the subdaemons and what they import.
PRELOAD = ("common.subdaemon", "openingd.openingd", "gossipd.gossipd", "hsmd.hsmd")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STAGING_MIN_FD = 100
_READY = b"ready"
_REQUEST_TIMEOUT = 10.0
# The next spare is forked once no request came for this long: not on the cores the
# subdaemon just started needs, and in a burst each start forks its own as before.
SPARE_AFTER_IDLE = 0.1


class ZygoteError(Exception):
    """The zygote could not start a subdaemon (the caller falls back to posix_spawn)."""


class ZygoteNotReady(ZygoteError):
    """Still importing: not an error, but this start has to go another way."""


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


# ---------------------------------------------------------------- the zygote process


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def process_title(module: str, args: list[str]) -> str:
    """What `ps` shows for a forked process: Core Lightning's names (lightning_openingd...)."""
    return " ".join([f"lightning_{module.rsplit('.', 1)[-1]}", *args])


def _place_fds(fds: list[int], targets: list[int]) -> None:
    """Put fds[i] at targets[i] and close every other descriptor."""
    staged = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _STAGING_MIN_FD) for fd in fds]
    for high, target in zip(staged, targets, strict=True):
        os.dup2(high, target, inheritable=True)
    _close_all_but(set(targets))


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor of this process except `keep`."""
    lo = 0
    for fd in sorted(keep):
        if lo < fd:  # closerange(n, n) would close from n to the end (close_range(n, n - 1))
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, max(os.sysconf("SC_OPEN_MAX"), 1024))


def _become_subdaemon(req: dict, fds: list[int]) -> None:
    """In the spare, given its request: set up as a fresh process would be, and run."""
    code = 1
    try:
        _place_fds(fds, req["targets"])
        setproctitle(process_title(req["module"], req["args"]))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if req.get("env") is not None:
            os.environ.clear()
            os.environ.update(req["env"])
        if req.get("cwd") and req["cwd"] != os.getcwd():
            os.chdir(req["cwd"])
        module = req["module"]
        try:
            main_block = _MAIN_BLOCKS.get(module)
            if main_block is not None:
                # Preloaded: its definitions ran at import; run what `python -m` runs
                # after them, the `if __name__ == "__main__":` block, in its namespace.
                mod = sys.modules[module]
                sys.argv = [mod.__file__ or module, *req["args"]]
                sys.modules["__main__"] = mod
                exec(main_block, mod.__dict__)
            else:
                import runpy

                sys.modules.pop(module, None)  # as in a fresh interpreter: run it anew
                sys.argv = [module, *req["args"]]
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except BaseException:  # as the interpreter does with an uncaught exception
            code = 1
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
    except BaseException:  # setting up failed: say why, where lightningd's stderr goes
        code = 127
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


class _Spare:
    """The next subdaemon, forked before its request: lightningd's child already, it waits
    on its end of a socket pair for the request and its descriptors. Taking one costs a
    send; the double fork, its teardown and the reparenting (~3-4 ms) happen in between."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.conn = DaemonConn(sock)

    def take(self, msg: bytes, fds: list[int]) -> int:
        """Hand the request over; returns the pid. DaemonConnError if the spare is gone."""
        try:
            self.conn.send(msg, fds)
        finally:
            self.conn.sock.close()
        return self.pid


def _fork_spare(master: int, zygote_sock: socket.socket) -> _Spare:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = _double_fork(theirs, zygote_sock)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    # The intermediate is gone, so the grandchild has been reparented: to lightningd,
    # if it is the subreaper it says it is. Otherwise the grandchild is nobody's to reap.
    try:
        parent = _parent_of(pid)
    except OSError:
        parent = None
    if parent != master:
        ours.close()
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        raise ZygoteError(f"pid {pid} was reparented to {parent}, not {master}")
    return _Spare(pid, ours)


def _double_fork(sock: socket.socket, zygote_sock: socket.socket) -> int:
    """Fork the spare as a grandchild; returns its pid once its parent has been reaped."""
    r, w = os.pipe()
    try:
        intermediate = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if intermediate == 0:
        try:
            os.close(r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _wait_as_spare(sock, me, zygote_sock)
            os.write(w, pid.to_bytes(8, "big"))
        finally:
            os._exit(0)
    os.close(w)
    try:
        raw = b""
        while chunk := os.read(r, 8 - len(raw)):
            raw += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(intermediate, 0)
    if len(raw) != 8 or os.waitstatus_to_exitcode(status) != 0:
        raise ZygoteError("intermediate process failed")
    return int.from_bytes(raw, "big")


def _wait_as_spare(sock: socket.socket, intermediate: int, zygote_sock: socket.socket) -> None:
    """In the grandchild: keep only stdio and our socket, wait to be lightningd's, then
    for the request (or the zygote's end: never needed), and become that subdaemon."""
    code = 127
    try:
        # Numbers closed below: these objects must not close them again later.
        zygote_sock.detach()
        _close_all_but({0, 1, 2, sock.fileno()})
        while os.getppid() == intermediate:
            time.sleep(0.0001)
        setproctitle(process_title("lightningd.spare", []))
        try:
            msg, fds = DaemonConn(sock).recv_with_fds()
        except DaemonConnError:
            os._exit(0)
        sock.detach()
        _become_subdaemon(json.loads(msg), fds)
    except BaseException:
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


def _check_request(msg: bytes, fds: list[int]) -> None:
    req = json.loads(msg)
    if len(fds) != len(req["targets"]):
        raise ValueError(f"{len(fds)} descriptors for {len(req['targets'])} targets")


def _start_subdaemon(
    msg: bytes, fds: list[int], spare: _Spare | None, master: int, zygote_sock: socket.socket
) -> int:
    """Give the request to the spare (to a new one if it died meanwhile); returns the pid."""
    if spare is not None:
        try:
            return spare.take(msg, fds)
        except DaemonConnError:
            pass  # killed while it waited: lightningd reaps it like any child
    return _fork_spare(master, zygote_sock).take(msg, fds)


def _is_main_test(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _main_block(module: str) -> CodeType | None:
    """The code of a module's trailing `if __name__ == "__main__":` block, if that is
    the only thing `python -m module` runs beyond an import (else None: use runpy)."""
    path = getattr(sys.modules[module], "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    blocks = [n for n in tree.body if isinstance(n, ast.If) and _is_main_test(n.test)]
    if len(blocks) != 1 or tree.body[-1] is not blocks[0] or blocks[0].orelse:
        return None
    return compile(ast.Module(body=blocks[0].body, type_ignores=[]), path, "exec")


_MAIN_BLOCKS: dict[str, CodeType] = {}
_preloaded = False


def _preload() -> None:
    """Import what the subdaemons run, and keep those objects' pages shared after a fork."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    import gc
    import importlib

    for name in PRELOAD:
        module = importlib.import_module(name)
        if (warm_up := getattr(module, "warm_up", None)) is not None:
            warm_up()  # first-use work done once here, shared by every child
        with contextlib.suppress(Exception):
            if name not in _MAIN_BLOCKS and (block := _main_block(name)) is not None:
                _MAIN_BLOCKS[name] = block
    import runpy  # noqa: F401
    import traceback  # noqa: F401

    gc.collect()
    gc.freeze()  # the collector never writes to these objects again, so no copy-on-write


def _readable(sock: socket.socket, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def serve(master: int, sock: socket.socket) -> None:
    conn = DaemonConn(sock)
    _preload()  # nothing left to do when lightningd forked us after doing it
    conn.send(_READY)
    spare: _Spare | None = None
    while True:
        if spare is None and not _readable(conn.sock, SPARE_AFTER_IDLE):
            with contextlib.suppress(Exception):  # else forked when the request comes
                spare = _fork_spare(master, conn.sock)
        try:
            msg, fds = conn.recv_with_fds()
        except DaemonConnError:
            os._exit(0)
        try:
            _check_request(msg, fds)
            taken, spare = spare, None
            reply = {"pid": _start_subdaemon(msg, fds, taken, master, conn.sock)}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            conn.send(json.dumps(reply).encode())
        except DaemonConnError:
            os._exit(0)


def _become_zygote(master: int, sock: socket.socket) -> None:
    """Ignore the terminal's ^C (lightningd's to handle), die with lightningd, serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != master:
        os._exit(0)
    setproctitle(process_title("lightningd.zygote", []))
    serve(master, sock)


def main() -> None:
    _become_zygote(int(sys.argv[1]), socket.socket(fileno=0))


# ---------------------------------------------------------------- lightningd's side


class Zygote:
    """lightningd's handle on its running zygote."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.conn = DaemonConn(sock)
        self.owner = os.getpid()
        self.env = dict(os.environ)
        self.ready = False
        self.dead = False
        self.spawned = 0  # subdaemons started through it
        self.lock = threading.Lock()

    def wait_ready(self, timeout: float | None) -> bool:
        """True once the zygote has said it is ready; waits at most `timeout` seconds."""
        if self.ready:
            return True
        readable, _, _ = select.select([self.conn.sock], [], [], timeout)
        if not readable:
            return False
        self.conn.sock.settimeout(_REQUEST_TIMEOUT)
        try:
            if self.conn.recv() != _READY:
                raise ZygoteError("zygote said something other than ready")
        except (DaemonConnError, OSError) as exc:
            self.shutdown()
            raise ZygoteError(f"zygote died while starting: {exc}") from None
        self.ready = True
        return True

    def spawn(self, module: str, fds: dict[int, int], args: list[str]) -> int:
        with self.lock:
            if self.dead:
                raise ZygoteError("zygote is dead")
            if not self.wait_ready(0):
                raise ZygoteNotReady("zygote is still importing")
            mapping = dict(fds)
            for std in (0, 1, 2):  # as posix_spawn would let the child inherit them
                if std not in mapping:
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(std, fcntl.F_GETFD)
                        mapping[std] = std
            targets = list(mapping)
            env = dict(os.environ)
            req = {
                "module": module,
                "args": list(args),
                "targets": targets,
                "cwd": os.getcwd(),
                "env": None if env == self.env else env,
            }
            try:
                self.conn.send(json.dumps(req).encode(), [mapping[t] for t in targets])
                reply = json.loads(self.conn.recv())
            except (DaemonConnError, OSError, ValueError) as exc:
                self.shutdown()
                raise ZygoteError(f"zygote lost: {exc}") from None
        if "pid" not in reply:
            raise ZygoteError(reply.get("error", "no pid"))
        pid = int(reply["pid"])
        try:
            parent = _parent_of(pid)
        except OSError:
            parent = None
        if parent != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            raise ZygoteError(f"pid {pid} is not our child (parent {parent})")
        self.spawned += 1
        return pid

    def shutdown(self) -> None:
        """Close our end (the zygote exits on EOF), kill it to be sure, and reap it."""
        self.dead = True
        with contextlib.suppress(OSError):
            self.conn.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


_zygote: Zygote | None = None
_disabled = False
_state_lock = threading.Lock()


def _launch_posix_spawn(theirs: socket.socket) -> int:
    from lightningd.subd import posix_spawn_subdaemon

    return posix_spawn_subdaemon("lightningd.zygote", {0: theirs.fileno()}, [str(os.getpid())])


def _launch_fork(theirs: socket.socket) -> int:
    """Fork this process into the zygote. Only for a process that has opened nothing it
    would mind sharing: the child closes every descriptor but stdio and its socket."""
    _preload()
    master = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            _close_all_but({0, 1, 2, theirs.fileno()})
            _become_zygote(master, theirs)
        except BaseException:
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _start(launch: Callable[[socket.socket], int], wait: bool, timeout: float) -> Zygote | None:
    global _zygote, _disabled
    with _state_lock:
        z = _zygote
        if z is None or z.dead or z.owner != os.getpid():
            if z is not None and z.owner == os.getpid():
                z.shutdown()
            _zygote = z = None
            try:
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
            except (OSError, AttributeError):
                _disabled = True
                return None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                pid = launch(theirs)
            except OSError:
                ours.close()
                _disabled = True
                return None
            finally:
                theirs.close()
            _zygote = z = Zygote(pid, ours)
            _disabled = False
    if wait:
        try:
            if not z.wait_ready(timeout):
                return None
        except ZygoteError:
            return None
    return z


def start_zygote(wait: bool = True, timeout: float = 30.0) -> Zygote | None:
    """Start this process's zygote as a fresh interpreter (replacing a dead one); None if
    it cannot run here. With `wait`, returns once it has imported the subdaemons."""
    return _start(_launch_posix_spawn, wait, timeout)


def fork_zygote() -> Zygote | None:
    """lightningd's zygote: import the subdaemons here, then fork. The zygote, and every
    subdaemon forked from it, shares these pages with lightningd instead of holding an
    interpreter of its own, and lightningd does not wait for a second one to start.

    Call it before starting threads or opening anything (files, sockets, the event loop).
    """
    return _start(_launch_fork, True, 30.0)


def stop_zygote() -> None:
    """Stop this process's zygote; later starts use posix_spawn until start_zygote()."""
    global _zygote, _disabled
    with _state_lock:
        z, _zygote, _disabled = _zygote, None, True
    if z is not None and z.owner == os.getpid():
        z.shutdown()


def current_zygote() -> Zygote | None:
    return _zygote


def zygote_spawn(module: str, fds: dict[int, int], args: list[str]) -> int:
    """Start a subdaemon through the zygote (starting one lazily); ZygoteError if not now.

    A lazily started zygote is not waited for: until it is ready, starts go the slow way.
    A zygote that died is not restarted behind the caller's back: start_zygote() does.
    """
    z = _zygote
    if z is None or z.owner != os.getpid():
        if _disabled and z is None:
            raise ZygoteError("zygote disabled")
        z = start_zygote(wait=False)
        if z is None:
            raise ZygoteError("zygote cannot run here")
    return z.spawn(module, fds, args)


if __name__ == "__main__":
    main()
