"""The real AWS CLI for the script tests without its start-up on every call: a fork server.

deploy.sh, init.sh and destroy.sh make some twenty to thirty `aws` calls a run, and each used to
start a Python and import the AWS CLI: about 0.3 s of CPU before the call's own work. This server
imports the CLI once; for each call it forks, and the child runs the CLI's own `aws` script
(.venv/bin/aws) as `aws ARGV...` would run: with the caller's arguments, environment, working
directory and standard streams (passed over the socket, SCM_RIGHTS), and answers its exit status.
Each call is a fresh process that finds the modules imported and, as its data loader, one the
server filled before forking: the models of the services the scripts call, parsed once (about
half of a call's own CPU was parsing them again). Nothing else of the CLI is replaced.
multiprocessing's forkserver does the same for Python functions, but cannot hand a child the
caller's streams and environment, so this one is written out.

`python awsfork.py SOCKET AWS_SCRIPT` serves (tests/infra/scripts/conftest.py starts one per test
process); `call` is the client (tests/stubs/standin.py).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import signal
import socket
import struct
import sys
import traceback

# A request: its length, then JSON {"argv", "env", "cwd"}, with the three streams attached.
# The answer: the exit status.
HEADER = struct.Struct("!I")
# What is read from the environment when Python starts or the CLI is imported, not when a call
# runs: the streams' encoding, and awscli/__init__.py's AWS_DATA_PATH (it appends its data folder)
# and botocore/compat.py's BOTO_DISABLE_CRT. A call must give them as the server started with them
# (the script tests do: they set LANG=C.UTF-8 and nothing else of these), or it is refused.
FIXED_AT_START = (
    "LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING", "PYTHONUTF8",
    "AWS_DATA_PATH", "BOTO_DISABLE_CRT",
)  # fmt: skip


def call(
    path: str, argv: list[str], env: dict[str, str], cwd: str, fds: tuple[int, int, int] = (0, 1, 2)
) -> int:
    """Runs `aws ARGV` in the server listening at `path` on these streams; its exit status."""
    request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        socket.send_fds(conn, [HEADER.pack(len(request)) + request], list(fds))
        answer = _read(conn, HEADER.size)
    return HEADER.unpack(answer)[0] if answer is not None else 255  # None: the child died


def accepts(path: str) -> bool:
    """Whether a server listens at `path` (its readiness check)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(path)
        except OSError:
            return False
    return True


def _read(conn: socket.socket, size: int, data: bytes = b"") -> bytes | None:
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _status(stop: SystemExit) -> int:
    """The exit status the interpreter makes of a SystemExit (a message goes to stderr as 1)."""
    if stop.code is None or isinstance(stop.code, int):
        return (stop.code or 0) & 0xFF
    print(stop.code, file=sys.stderr)
    return 1


def _run(
    conn: socket.socket, script: str, started: dict[str, str], imported: dict[str, str]
) -> int:
    """In the forked child: takes on the caller's streams, directory and environment, and runs
    the `aws` script as its main program."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(data) < HEADER.size or len(fds) != 3:  # a readiness check (accepts), or a broken call
        return 255
    (size,) = HEADER.unpack(data[: HEADER.size])
    body = _read(conn, size, data[HEADER.size :])
    if body is None:
        return 255
    request = json.loads(body)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    differ = [n for n in FIXED_AT_START if request["env"].get(n) != started.get(n)]
    if differ:
        os.write(
            2, f"awsfork: {differ} differ from the server's, which read them at start\n".encode()
        )
        return 2
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"] | imported)  # as importing the CLI would have added them
    # Streams on the caller's descriptors, as the interpreter makes them at start (stderr
    # line-buffered).
    sys.stdin, sys.stdout, sys.stderr = (
        open(fd, mode, buffering, like.encoding, like.errors, closefd=False)  # noqa: SIM115
        for fd, mode, buffering, like in (
            (0, "r", -1, sys.stdin), (1, "w", -1, sys.stdout), (2, "w", 1, sys.stderr),
        )
    )  # fmt: skip
    sys.argv = [script, *request["argv"]]
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = _status(stop)
    except BaseException:  # as the interpreter ends on an uncaught exception
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    return status


# The services deploy.sh, init.sh and destroy.sh call; another one's models load in its call.
SERVICES = ("cloudformation", "ec2", "ecr", "eks", "elbv2", "iam", "s3", "secretsmanager", "sts")
MODELS = ("service-2", "paginators-1", "waiters-2", "endpoint-rule-set-1")


def _share_loader() -> None:
    """Makes every call's session use one data loader, filled here, for the data path every call
    has (AWS_DATA_PATH is fixed at start): the files it parses never change while the server
    runs, and a loader keeps what it parsed for the life of a process anyway, as each call's own
    would. A session asking for another data path (a profile's `data_path`) gets its own."""
    import botocore.exceptions
    import botocore.loaders
    import botocore.session

    data_path = os.environ.get("AWS_DATA_PATH")
    shared = botocore.loaders.create_loader(data_path)
    for model in MODELS:
        shared.list_available_services(model)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry", "cli"):
        shared.load_data(name)
    for service in SERVICES:
        for model in MODELS:
            with contextlib.suppress(botocore.exceptions.DataNotFoundError):  # no waiters, say
                shared.load_service_model(service, model)
    own_loader = botocore.session.create_loader

    def create_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
        return shared if search_path_string == data_path else own_loader(search_path_string)

    botocore.session.create_loader = create_loader


def serve(path: str, script: str) -> None:
    started = dict(os.environ)
    # What the `aws` script imports, and the CLI's customisations every call loads.
    for module in ("awscli.clidriver", "awscli.handlers"):
        importlib.import_module(module)
    imported = {name: value for name, value in os.environ.items() if started.get(name) != value}
    _share_loader()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children reap themselves
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(64)
        while True:
            conn, _ = server.accept()
            if os.fork() == 0:  # the child answers and never returns to the loop
                status = 255
                try:
                    server.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    status = _run(conn, script, started, imported)
                except BaseException:  # a fault of this server, not of the CLI
                    traceback.print_exc()
                finally:
                    with contextlib.suppress(OSError):
                        conn.sendall(HEADER.pack(status))
                    os._exit(0)
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
