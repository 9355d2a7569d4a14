"""A real Flower deployment on loopback: SuperLink + N SuperNodes (separate OS processes, TLS), ``flwr run``.

Command::

    python -m trustnlp.federated.flower_deploy up --nodes 2 --rounds 3 --out DIR [--config FILE]

What :func:`up` does, in order:

1. writes a TLS CA and a server certificate for ``127.0.0.1`` / ``localhost`` (EC P-256, made with
   ``cryptography`` at launch, valid one day) under ``DIR/deploy/tls/``;
2. picks free loopback ports and starts ``flower-superlink`` (Fleet, Control and runtime APIs on one
   HTTPS port; ``--disable-runtime-dependency-installation``: no ``uv sync``) and waits for its
   ``/health``; then ``N`` ``flower-supernode`` processes connecting to it over TLS (root certificate:
   the CA), node ``i`` with ``--node-config 'partition-id=i num-partitions=N'`` when the population
   has ``N`` clients (else the nodes are *shared*: each trains whichever client the server names);
3. generates the Flower app directory ``DIR/deploy/app/pyproject.toml`` (``[tool.flwr.app.components]``:
   ``trustnlp.federated.flower:server_app`` / ``:client_app``; the code is the installed ``trustnlp``) and
   a Flower config ``$FLWR_HOME/config.toml`` (``FLWR_HOME = DIR/deploy/flwr-home``) naming the SuperLink
   connection (``address``, ``root-certificates``: flwr 1.41 reads SuperLink connections from there,
   not from the app's pyproject);
4. ``flwr run DIR/deploy/app trustnlp-local --run-config 'config-file="..." out-dir="DIR" min-nodes=N'``,
   then waits for ``DIR/results.json`` (written by the ServerApp) and for ``flwr ls`` to report the run
   finished, and saves the run's log (``flwr log --show``) to ``DIR/deploy/logs/run.log``;
5. stops every process it started by its pid (SIGTERM, SIGKILL after ``--stop-timeout`` s), supernodes
   first, and the processes those started (Flower's ``flower-superexec`` helpers) likewise, and checks
   that none is left;
6. writes ``DIR/deploy.json``: ports, pids and exit codes, run id and status, timings, and the
   per-round ``test_loss`` / ``test_accuracy`` (before training: round 0).

The default workload (no ``--config``): the built-in assistant corpus (600 utterances, 10 users),
word tokenizer, bag-of-embeddings model, IID partition into one client per node, every client every
round, 2 local epochs, FedAvg, seed 0, one torch thread per process.

Every process started gets ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``,
``RAY_USAGE_STATS_ENABLED=0``, ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, ``HF_HUB_OFFLINE=1``,
``OMP_NUM_THREADS=1`` and ``PATH`` starting with this Python's ``bin`` (Flower starts its helpers by
name). Linux only (``/proc`` is read to find the helpers).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustnlp.errors import ConfigError, MissingDependencyError, expected
from trustnlp.federated.config import FederatedConfig

__all__ = ["TLSFiles", "Deployment", "default_config", "generate_tls", "free_port", "write_app", "deployment_env",
           "process_alive", "up", "main", "CONNECTION"]

#: The SuperLink connection's name in ``$FLWR_HOME/config.toml``.
CONNECTION = "trustnlp-local"
_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


# -- pieces ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA certificate, the server certificate and its private key."""

    ca: Path
    cert: Path
    key: Path


def generate_tls(directory: str | Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 1) -> TLSFiles:
    """A fresh CA and a server certificate it signs, with ``hosts`` as subject alternative names (DNS names
    or IP addresses), EC P-256 / SHA-256; the key file is readable by its owner only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC)
    start, end = now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trustnlp flower test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0]))]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return files


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_config(nodes: int, rounds: int) -> FederatedConfig:
    """The default workload of :func:`up` (see the module docs)."""
    return FederatedConfig(data="assistant", corpus_size=600, corpus_users=10, tokenizer="word", model="bag",
                           partition="iid", num_clients=nodes, clients_per_round=nodes, local_epochs=2, rounds=rounds,
                           algorithm="fedavg", seed=0, threads=1, device="cpu", vectorize="off", eval_every=1)


_PYPROJECT = """\
[project]
name = "trustnlp-flower"
version = "0.1.0"
description = "trustnlp's federated algorithms as a Flower app (generated by trustnlp.federated.flower_deploy)"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "trustnlp"

[tool.flwr.app.components]
serverapp = "trustnlp.federated.flower:server_app"
clientapp = "trustnlp.federated.flower:client_app"

[tool.flwr.app.config]
config-file = ""
config-json = ""
out-dir = ""
min-nodes = 1
node-timeout = 120.0
round-timeout = 600.0
runtime = "deployment"
"""


def write_app(directory: str | Path) -> Path:
    """The Flower app directory (a ``pyproject.toml`` pointing at :mod:`trustnlp.federated.flower`'s apps)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT, encoding="utf-8")
    return directory


def deployment_env(flwr_home: str | Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process :func:`up` starts (see the module docs)."""
    env = dict(os.environ if base is None else base)
    env.update(_ENV)
    env["FLWR_HOME"] = str(Path(flwr_home).absolute())
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _toml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string literal is a valid TOML basic string


# -- process bookkeeping (Linux /proc) --------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, starttime)`` of ``pid`` from ``/proc``, or ``None`` if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text[text.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19])


def _descendants(roots: Sequence[int]) -> dict[int, int]:
    """Every live descendant of ``roots``: pid -> its start time (to recognise it later, not a reused pid)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] != "Z":
                children.setdefault(st[1], []).append(int(entry.name))
                starts[int(entry.name)] = st[2]
    out: dict[int, int] = {}
    stack = list(roots)
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out[c] = starts[c]
                stack.append(c)
    return out


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` runs (a zombie does not; with ``start``, only if it is the process that started then)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z" and (start is None or st[2] == start)


@dataclass
class _Proc:
    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    start: int | None = None
    returncode: int | None = None
    how: str = ""


@dataclass
class Deployment:
    """The processes of one loopback deployment (see :func:`up`); :meth:`stop` ends them all by pid."""

    work: Path
    env: dict[str, str]
    procs: list[_Proc] = field(default_factory=list)
    helpers: dict[int, int] = field(default_factory=dict)  # pid -> start time of processes Flower started
    helper_report: list[dict[str, Any]] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> _Proc:
        """Start ``args`` (stdout and stderr to ``work/logs/<name>.log``)."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as f:
            popen = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                     cwd=self.work)
        st = _stat(popen.pid)
        proc = _Proc(name, args, popen, log, None if st is None else st[2])
        self.procs.append(proc)
        return proc

    def check_running(self) -> None:
        """``RuntimeError`` (with the log's tail) if a started process has exited."""
        for p in self.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} (pid {p.popen.pid}) exited with code {p.popen.returncode}:\n{_tail(p.log)}")

    def note_helpers(self) -> None:
        """Remember the processes the started ones have started so far (to stop them too)."""
        self.helpers.update(_descendants([p.popen.pid for p in self.procs if p.popen.poll() is None]))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM each started process (last started first), SIGKILL after ``timeout`` s; then the same for any
        process they started that is still alive."""
        self.note_helpers()
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.terminate()
                try:
                    p.popen.wait(timeout)
                    p.how = "terminated"
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()
                    p.how = "killed"
            else:
                p.how = p.how or "had exited"
            p.returncode = p.popen.returncode
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_alive(pid, s) for pid, s in self.helpers.items()):
            time.sleep(0.1)  # Flower's helpers watch their parent's pid and exit by themselves
        for pid, start in self.helpers.items():
            how = "exited"
            if process_alive(pid, start):
                how = _signal_and_wait(pid, start, timeout)
            self.helper_report.append({"pid": pid, "start": start, "stopped": how})

    def leftovers(self) -> list[int]:
        """Started processes or their helpers still alive."""
        mine = [p.popen.pid for p in self.procs if p.popen.poll() is None]
        return mine + [pid for pid, s in self.helpers.items() if process_alive(pid, s)]

    def report(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "pid": p.popen.pid, "start": p.start, "returncode": p.returncode, "stopped": p.how,
                 "log": str(p.log)} for p in self.procs]


def _signal_and_wait(pid: int, start: int, timeout: float) -> str:
    for sig, how in ((signal.SIGTERM, "terminated"), (signal.SIGKILL, "killed")):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return "exited"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(pid, start):
                return how
            time.sleep(0.05)
    return "still alive"


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


_BIND_ATTEMPTS = 3


def _start_on_free_ports(dep: Deployment, names: Sequence[str], args: Callable[[int, int], list[str]],
                         ready: Callable[[_Proc, int], None]) -> list[int]:
    """Start process ``i`` as ``args(i, port)`` on a free port (all at once), then wait until ``ready(proc, port)``
    for each; one that died because its port was taken meanwhile (the port was free when picked) is restarted on
    another port (up to :data:`_BIND_ATTEMPTS` times). Returns the ports."""
    started = []
    for i, name in enumerate(names):
        port = free_port()
        started.append((dep.start(name, args(i, port)), port))
    ports = []
    for i, name in enumerate(names):
        for attempt in range(_BIND_ATTEMPTS):
            proc, port = started[i]
            try:
                ready(proc, port)
                break
            except RuntimeError:
                taken = proc.popen.poll() is not None and "address already in use" in _tail(proc.log).lower()
                if not taken or attempt + 1 == _BIND_ATTEMPTS:
                    raise
                dep.procs.remove(proc)
                port = free_port()
                started[i] = (dep.start(name, args(i, port)), port)
        ports.append(started[i][1])
    return ports


def _exited(proc: _Proc) -> None:
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{proc.name} (pid {proc.popen.pid}) exited with code {proc.popen.returncode}:\n{_tail(proc.log)}")


def _wait_log(proc: _Proc, text: str, *, timeout: float) -> None:
    """Wait until ``proc``'s log contains ``text`` (``RuntimeError`` if it exits or on timeout)."""
    deadline = time.monotonic() + timeout
    while text not in _tail(proc.log, 1 << 16):
        _exited(proc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not log {text!r} within {timeout:g} s:\n{_tail(proc.log)}")
        time.sleep(0.1)


def _wait_healthy(url: str, ca: Path, proc: _Proc, *, timeout: float) -> None:
    """Wait until the SuperLink answers ``url`` over TLS verified with the CA ``ca`` (hostname checked)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        _exited(proc)
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2.0) as r:  # noqa: S310 - a loopback https URL we built
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"The SuperLink did not answer {url} within {timeout:g} s.")
        time.sleep(0.2)


def _flwr(args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "flwr")
    return subprocess.run([exe, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _json_out(cp: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    text = cp.stdout
    start = text.find("{")
    try:
        return dict(json.loads(text[start:])) if start >= 0 else {}
    except json.JSONDecodeError:
        raise RuntimeError(f"`flwr {what}` printed no JSON (exit code {cp.returncode}):\n"
                           f"{cp.stdout[-2000:]}{cp.stderr[-2000:]}") from None


def _run_status(env: Mapping[str, str], work: Path, run_id: str) -> str:
    cp = _flwr(["ls", CONNECTION, "--run-id", run_id, "--format", "json"], env, work, timeout=60.0)
    runs = _json_out(cp, "ls").get("runs") or []
    return str(runs[0].get("status", "")) if runs else ""


# -- the launcher ----------------------------------------------------------------------------------
def up(nodes: int, rounds: int | None, out: str | Path, *, config: FederatedConfig | None = None, timeout: float = 300.0,
       stop_timeout: float = 10.0, shared_nodes: bool = False) -> dict[str, Any]:
    """Start the deployment, run the app, stop everything and return (and write) ``DIR/deploy.json``'s content.

    Args:
        nodes: SuperNodes to start (>= 1).
        rounds: rounds (overrides ``config.rounds``; ``None`` keeps it).
        out: output directory (``results.json``, ``model/``, ``deploy.json``, ``deploy/``).
        config: the run (default: :func:`default_config`).
        timeout: seconds for the whole run (start to ``results.json``).
        stop_timeout: seconds between SIGTERM and SIGKILL.
        shared_nodes: start the nodes without partition ids even when there is one client per node.

    Raises:
        ConfigError: bad arguments. RuntimeError: a process failed or the run did not finish in time
        (everything started is stopped first).
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(expected("nodes", "an integer >= 1", nodes))
    bindir = Path(sys.executable).parent
    for exe in ("flower-superlink", "flower-supernode", "flwr"):
        if not (bindir / exe).exists():
            raise MissingDependencyError("flwr", "flower", f"the `{exe}` executable (looked in {bindir})")
    config = config or default_config(nodes, rounds or 3)
    if rounds is not None:
        config = config.model_copy(update={"rounds": int(rounds)})
        config = FederatedConfig(**config.model_dump())  # re-validate
    out = Path(out).absolute()
    work = out / "deploy"
    work.mkdir(parents=True, exist_ok=True)
    for stale in (out / "results.json", out / "deploy.json"):
        stale.unlink(missing_ok=True)
    config_file = work / "config.json"
    config_file.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    tls = generate_tls(work / "tls")
    app = write_app(work / "app")
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    env = deployment_env(home)
    partition_ids = not shared_nodes and config.num_clients == nodes
    dep = Deployment(work, env)
    summary: dict[str, Any] = {"nodes": nodes, "rounds": config.rounds, "tls_ca": str(tls.ca),
                               "partition_ids": partition_ids, "flwr_home": str(home), "app": str(app)}
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        def superlink(_i: int, port: int) -> list[str]:
            return [str(bindir / "flower-superlink"), "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert),
                    "--ssl-keyfile", str(tls.key), "--host", "127.0.0.1", "--port", str(port),
                    "--disable-runtime-dependency-installation"]

        [port] = _start_on_free_ports(dep, ["superlink"], superlink, lambda p, port: _wait_healthy(
            f"https://127.0.0.1:{port}/health", tls.ca, p, timeout=60.0))
        summary["superlink_port"] = port
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
            f"root-certificates = {_toml_str(str(tls.ca))}\n", encoding="utf-8")
        summary["superlink_ready_seconds"] = time.perf_counter() - t0

        def supernode(i: int, node_port: int) -> list[str]:
            a = [str(bindir / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(tls.ca),
                 "--host", "127.0.0.1", "--port", str(node_port)]
            return a + (["--node-config", f"partition-id={i} num-partitions={nodes}"] if partition_ids else [])

        summary["supernode_ports"] = _start_on_free_ports(
            dep, [f"supernode-{i}" for i in range(nodes)], supernode,
            lambda p, _port: _wait_log(p, "Uvicorn running on", timeout=60.0))
        run_config = work / "run_config.toml"  # a file: any path survives (key=value pairs split on spaces)
        run_config.write_text(f"config-file = {_toml_str(str(config_file))}\nout-dir = {_toml_str(str(out))}\n"
                              f"min-nodes = {nodes}\nnode-timeout = {float(min(timeout, 120.0))}\n", encoding="utf-8")
        cp = _flwr(["run", str(app), CONNECTION, "--format", "json", "--run-config", str(run_config)], env, work)
        started = _json_out(cp, "run")
        if not started.get("success") or not started.get("run-id"):
            raise RuntimeError(f"`flwr run` failed (exit code {cp.returncode}):\n{cp.stdout[-3000:]}{cp.stderr[-3000:]}")
        run_id = str(started["run-id"])
        summary["run_id"] = run_id
        summary["run_submitted_seconds"] = time.perf_counter() - t0
        status, last_ls = "", 0.0
        deadline = time.monotonic() + timeout
        while True:
            dep.check_running()
            dep.note_helpers()
            done = (out / "results.json").is_file()
            if done or time.monotonic() - last_ls > 15.0:  # `flwr ls` costs a CPU-second: rarely, until results exist
                status, last_ls = _run_status(env, work, run_id), time.monotonic()
                done = (out / "results.json").is_file()  # the ServerApp writes it before it finishes
                if status == "finished:completed" and done:
                    break
                if status.startswith("finished"):
                    raise RuntimeError(f"The Flower run {run_id} ended with status {status!r}"
                                       f"{'' if done else ' without writing results.json'}.")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The Flower run {run_id} did not finish within {timeout:g} s (status {status!r}).")
            time.sleep(0.5)
        summary["run_status"] = status
        summary["run_seconds"] = time.perf_counter() - t0
    except BaseException as e:  # stop everything before reporting (KeyboardInterrupt included)
        error = e
    finally:
        if summary.get("run_id"):
            try:
                cp = _flwr(["log", summary["run_id"], CONNECTION, "--show"], env, work, timeout=60.0)
                (work / "logs" / "run.log").write_text(cp.stdout + cp.stderr, encoding="utf-8")
            except (subprocess.TimeoutExpired, OSError):
                pass
        dep.stop(stop_timeout)
    summary["processes"] = dep.report()
    summary["helpers"] = dep.helper_report
    summary["leftover_pids"] = dep.leftovers()
    if error is not None:
        if isinstance(error, RuntimeError):
            logs = "\n".join(f"--- {p.name} ---\n{_tail(p.log, 1500)}" for p in dep.procs)
            raise RuntimeError(f"{error}\n{logs}") from error
        raise error
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    m = result["metrics"]
    initial = {"round": 0, "test_loss": m.get("initial_test_loss"), "test_accuracy": m.get("initial_test_accuracy")}
    summary["per_round"] = ([initial]
                            + [{"round": r["round"], "train_loss": r.get("train_loss"), "test_loss": r.get("test_loss"),
                                "test_accuracy": r.get("test_accuracy"), "selected": r.get("selected"),
                                "nodes": r.get("nodes")} for r in result["rows"]])
    summary["total_seconds"] = time.perf_counter() - t0
    from trustnlp.results import atomic_write_json

    atomic_write_json(out / "deploy.json", summary)
    if summary["leftover_pids"]:
        raise RuntimeError(f"Processes still alive after stopping the deployment: {summary['leftover_pids']}.")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustnlp.federated.flower_deploy up --nodes N --rounds R --out DIR [--config FILE]``."""
    ap = argparse.ArgumentParser(prog="python -m trustnlp.federated.flower_deploy", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start SuperLink + SuperNodes (TLS), run the app, stop everything")
    u.add_argument("--nodes", type=int, default=2, help="SuperNodes (default 2)")
    u.add_argument("--rounds", type=int, default=None, help="rounds (default 3, or the config's)")
    u.add_argument("--out", required=True, help="output directory")
    u.add_argument("--config", default=None, help="a FederatedConfig file (JSON/YAML; default: the built-in workload)")
    u.add_argument("--timeout", type=float, default=300.0, help="seconds for the run (default 300)")
    u.add_argument("--stop-timeout", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL (default 10)")
    u.add_argument("--shared-nodes", action="store_true", help="start the nodes without partition ids")
    args = ap.parse_args(argv)
    from trustnlp.errors import TrustNLPError

    try:
        config = None
        if args.config:
            from trustnlp.config import load_config

            config = load_config(args.config, FederatedConfig)
        summary = up(args.nodes, args.rounds, args.out, config=config, timeout=args.timeout,
                     stop_timeout=args.stop_timeout, shared_nodes=args.shared_nodes)
    except TrustNLPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in summary["per_round"]:
        acc, loss = r.get("test_accuracy"), r.get("test_loss")
        print(f"round {r['round']}: test_loss {loss if loss is None else f'{loss:.4f}'}  "
              f"test_accuracy {acc if acc is None else f'{acc:.4f}'}")
    print(f"run {summary['run_id']}: {summary['run_status']} in {summary['total_seconds']:.1f} s; "
          f"results in {Path(args.out) / 'results.json'}, deployment in {Path(args.out) / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
