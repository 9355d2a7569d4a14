"""Tests of the Flower bridge (``trustnlp.federated.flower``) and its loopback deployment launcher
(``trustnlp.federated.flower_deploy``).

Reference for every equality check: ``run_federated`` (the in-process ``simulate``) on the same
config, whose saved model is compared parameter by parameter, **bitwise** (``torch.equal``): the
bridge runs the same ``local_update`` with the same seeds, parameters cross Flower as float32
``ArrayRecord`` bytes (exact), and the server aggregates the updates in the same order, so nothing
may differ by even one ulp.

- Fast tests drive the ServerApp's loop (``run_server``) over an in-process Grid that hands each
  message to the real ``client_app`` (no Ray, no sockets; < 2 s each).
- ``test_flower_simulation_matches_simulate``: Flower's simulation runtime (``run_simulation``,
  Ray, one CPU per client actor, Ray's session dir in a fresh temp dir).
- ``test_loopback_deployment``: ``python -m trustnlp.federated.flower_deploy up --nodes 2 --rounds 3``
  (SuperLink + 2 SuperNodes as OS processes, TLS, ``flwr run``), hard limit 240 s.

Telemetry: ``FLWR_TELEMETRY_ENABLED=0`` and ``RAY_USAGE_STATS_ENABLED=0`` are set before flwr is imported.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"

with warnings.catch_warnings():  # importing flwr's CLI dependencies warns about Click 9
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("flwr", reason="flwr is not installed (pip install 'trustnlp[flower]')")
    from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.task_identity import TaskIdentity

from trustnlp.errors import ConfigError  # noqa: E402
from trustnlp.federated import flower as fl  # noqa: E402
from trustnlp.federated.config import FederatedConfig  # noqa: E402
from trustnlp.federated.study import run_federated  # noqa: E402
from trustnlp.models.io import load_model  # noqa: E402

BASE = dict(data="assistant", corpus_size=300, corpus_users=10, tokenizer="word", model="bag", clients_per_round=3,
            rounds=3, threads=1, vectorize="off", device="cpu", seed=0)


def _cfg(**kw) -> FederatedConfig:
    return FederatedConfig(**{**BASE, **kw})


class LocalGrid(Grid):
    """A Grid whose nodes are in-process contexts; each message goes to ``fl.client_app`` (as a SuperNode
    would hand it to the ClientApp), an exception becomes an error reply, as in Flower's runtimes."""

    def __init__(self, partitions: list[int | None]) -> None:
        self.contexts = {1000 + i: Context(run_id=1, node_id=1000 + i, node_config={} if p is None else {"partition-id": p},
                                           state=RecordDict(), run_config={}) for i, p in enumerate(partitions)}
        self.waves: list[list[tuple[str, int]]] = []
        self.sent: list[Message] = []

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        msgs = list(messages)
        self.waves.append([(m.metadata.message_type, m.metadata.dst_node_id) for m in msgs])
        replies = []
        for m in msgs:
            self.sent.append(m)
            try:
                replies.append(fl.client_app(m, self.contexts[m.metadata.dst_node_id]))
            except Exception as e:  # Flower turns a ClientApp exception into an error reply
                replies.append(Message(Error(code=1, reason=f"{type(e).__name__}: {e}"), reply_to=m))
        return replies


@pytest.fixture
def task_identity():
    """Messages built outside Flower's runtimes need a run id; restore Flower's process-global identity after."""
    old = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = old


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).model.state_dict()


def _assert_bitwise(ref: Path, got: Path) -> None:
    a, b = _state(ref), _state(got)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"parameter {k} differs"


def _nodes(n_clients: int, shared: int | None) -> list[int | None]:
    return [None] * shared if shared else list(range(n_clients))


@pytest.mark.parametrize("kw, shared", [
    (dict(algorithm="fedprox", partition="user"), None),  # one node per user; FedProx mu travels in the message
    (dict(algorithm="fedadam", partition="iid", num_clients=6, selection="power-of-choice"), 2),  # loss queries
    (dict(algorithm="fedavg", partition="iid", num_clients=6, selection="oort"), 2),
    (dict(algorithm="fedavgm", partition="iid", num_clients=6, selection="activity", aggregation="horvitz-thompson",
          availability=0.7), None),
])
def test_bridge_matches_run_federated(tmp_path, task_identity, kw, shared):
    cfg = _cfg(**kw)
    ref = run_federated(cfg, tmp_path / "ref", progress=False)
    grid = LocalGrid(_nodes(ref.metrics["num_clients"], shared))
    run = fl.run_server(grid, cfg, tmp_path / "fl")
    _assert_bitwise(tmp_path / "ref" / "model", tmp_path / "fl" / "model")
    assert [r["selected"] for r in run.rows] == [r["selected"] for r in ref.rows]
    assert [r["train_loss"] for r in run.rows] == [r["train_loss"] for r in ref.rows]
    assert run.rows[-1]["test_accuracy"] == ref.metrics["test_accuracy"]
    # a node never holds two messages of one wave; shared nodes serve several clients in several waves
    assert all(len({n for _, n in w}) == len(w) for w in grid.waves)
    if shared:
        assert len(run.nodes.shared) == shared and not run.nodes.owner
        assert max(len(w) for w in grid.waves) <= shared
        assert sum(w[0][0] == "train" for w in grid.waves) == cfg.rounds * -(-cfg.clients_per_round // shared)
    else:
        owners = {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
        for r in run.rows:
            assert [owners[n] for n in r["nodes"]] == r["selected"]
    results = json.loads(run.results.read_text())
    assert results["kind"] == "flower" and results["metrics"]["initial_test_loss"] > 0


def test_equality_check_discriminates(tmp_path, task_identity):
    """The bitwise comparison is not vacuous: another seed gives another model."""
    run_federated(_cfg(algorithm="fedavg", partition="user", seed=1), tmp_path / "ref1", progress=False)
    fl.run_server(LocalGrid(list(range(10))), _cfg(algorithm="fedavg", partition="user"), tmp_path / "fl0")
    a, b = _state(tmp_path / "ref1" / "model"), _state(tmp_path / "fl0" / "model")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_messages_carry_arrays_and_json_only(tmp_path, task_identity):
    cfg = _cfg(algorithm="fedprox", mu=0.05, partition="user", rounds=1)
    grid = LocalGrid(list(range(10)))
    fl.run_server(grid, cfg, tmp_path)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(train) == 3
    for m in train:
        assert set(m.content.keys()) == {"arrays", "config"}
        assert isinstance(m.content["arrays"], ArrayRecord) and isinstance(m.content["config"], ConfigRecord)
        c = m.content["config"]
        assert all(isinstance(v, (str, int)) for v in c.values())
        assert FederatedConfig(**json.loads(c["trustnlp-config"])) == cfg
        assert json.loads(c["instruction"]) == {"mu": 0.05}
        assert c["server-round"] == 1 and 0 <= c["client-id"] < 10


def test_node_refuses_a_client_it_does_not_hold(task_identity):
    cfg = _cfg(partition="user")
    msg = Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({
        "trustnlp-config": cfg.model_dump_json(), "client-id": 2, "server-round": 1, "instruction": "{}"})}),
        dst_node_id=5, message_type="train")
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match="holds partition 1 only"):
        fl.client_app(msg, ctx)
    bad = Message(RecordDict({"config": ConfigRecord({"trustnlp-config": cfg.model_dump_json(), "client-id": 99,
                                                      "server-round": 1})}), dst_node_id=5, message_type="train")
    with pytest.raises(ConfigError, match="client-id"):
        fl.client_app(bad, Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={}))


def test_node_discovery(task_identity):
    m = fl.discover_nodes(LocalGrid([2, None, 0, 1]), 3)
    assert dict(m.owner) == {2: 1000, 0: 1002, 1: 1003} and m.shared == (1001,)
    assert m.assign([0, 1, 2]) == [1002, 1003, 1000]
    shared = fl.discover_nodes(LocalGrid([None, None]), 5)
    assert shared.assign([4, 0, 3]) == [1000, 1001, 1000]  # round-robin in the given order
    with pytest.raises(ConfigError, match="both report partition-id 1"):
        fl.discover_nodes(LocalGrid([1, 1]), 3)
    with pytest.raises(ConfigError, match="partition-id of Flower node"):
        fl.discover_nodes(LocalGrid([0, 7]), 3)
    with pytest.raises(RuntimeError, match=r"clients without a node: \[2\]"):
        fl.discover_nodes(LocalGrid([0, 1]), 3, timeout=0.3)
    with pytest.raises(RuntimeError, match="expected >= 3"):
        fl.discover_nodes(LocalGrid([None]), 3, min_nodes=3, timeout=0.3)
    with pytest.raises(ConfigError, match="min-nodes"):
        fl.discover_nodes(LocalGrid([None]), 3, min_nodes=0)
    with pytest.raises(ConfigError, match="No Flower node holds client 2"):
        fl.NodeMap({0: 1}, (), {1: 0}).assign([0, 2])


def test_failed_node_names_the_client(tmp_path, task_identity):
    class Failing(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):
            msgs = list(messages)
            if msgs and msgs[0].metadata.message_type == "train":
                return [Message(Error(code=7, reason="out of memory"), reply_to=m) for m in msgs]
            return super().send_and_receive(msgs, timeout=timeout)

    with pytest.raises(RuntimeError, match=r"failed on client \d+ \(train, round 1\): error 7: out of memory"):
        fl.run_server(Failing(list(range(10))), _cfg(partition="user", rounds=1), tmp_path)


def test_config_sources(tmp_path, monkeypatch):
    cfg = _cfg(algorithm="fedavgm")
    monkeypatch.delenv(fl.ENV_CONFIG, raising=False)
    monkeypatch.delenv(fl.ENV_OUT, raising=False)
    got, out = fl.config_from_run_config({"config-json": cfg.model_dump_json(), "out-dir": str(tmp_path)})
    assert got == cfg and out == tmp_path
    path = tmp_path / "c.json"
    path.write_text(cfg.model_dump_json())
    assert fl.config_from_run_config({"config-file": str(path)}) == (cfg, Path(fl.DEFAULT_OUT))
    monkeypatch.setenv(fl.ENV_CONFIG, str(path))
    monkeypatch.setenv(fl.ENV_OUT, str(tmp_path / "o"))
    assert fl.config_from_run_config({}) == (cfg, tmp_path / "o")
    monkeypatch.setenv(fl.ENV_CONFIG, cfg.model_dump_json())
    assert fl.config_from_run_config({"config-file": ""})[0] == cfg
    monkeypatch.delenv(fl.ENV_CONFIG)
    with pytest.raises(ConfigError, match=fl.ENV_CONFIG):
        fl.config_from_run_config({})
    with pytest.raises(ConfigError, match="`rounds`"):
        fl.config_from_run_config({"config-json": json.dumps({"rounds": 0})})
    with pytest.raises(ConfigError, match="not valid JSON"):
        fl.parse_config("{rounds: 1")
    with pytest.raises(ConfigError, match="setting"):
        fl.build_workload(_cfg(setting="continual", periods=2))


# -- launcher pieces (no Flower processes) ---------------------------------------------------------------
def test_tls_certificates_verify_for_both_names(tmp_path):
    """A real TLS handshake with the generated server certificate: verified against the CA for 127.0.0.1 and
    localhost; refused for another name and by another CA."""
    import ssl
    import threading

    from trustnlp.federated.flower_deploy import generate_tls

    files = generate_tls(tmp_path / "tls")
    other = generate_tls(tmp_path / "other")
    assert files.key.stat().st_mode & 0o777 == 0o600
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(10)
    attempts = [("127.0.0.1", files.ca, True), ("localhost", files.ca, True), ("example.com", files.ca, False),
                ("127.0.0.1", other.ca, False)]

    def serve() -> None:
        for _ in attempts:
            conn, _addr = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(1)
            except (ssl.SSLError, OSError):
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        for host, ca, ok in attempts:
            ctx = ssl.create_default_context(cafile=str(ca))
            with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                if ok:
                    with ctx.wrap_socket(raw, server_hostname=host) as t:
                        assert t.version() in ("TLSv1.2", "TLSv1.3")
                        t.sendall(b"x")
                else:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        ctx.wrap_socket(raw, server_hostname=host)
    finally:
        th.join(10)
        listener.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux only)")
def test_deployment_stop_kills_stubborn_process_and_its_helper(tmp_path):
    """A process that ignores SIGTERM is killed after the timeout; a process it started (in its own session,
    as Flower starts its helpers) is found through /proc and stopped by its pid too."""
    from trustnlp.federated.flower_deploy import Deployment, process_alive

    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(60)'\n"
              "p = subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
              "print('child', p.pid, flush=True)\n"
              "time.sleep(60)\n")
    dep = Deployment(tmp_path, dict(os.environ))
    proc = dep.start("stubborn", [sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while "child" not in proc.log.read_text():
        assert time.monotonic() < deadline and proc.popen.poll() is None
        time.sleep(0.05)
    child = int(proc.log.read_text().split()[1])
    dep.note_helpers()
    assert child in dep.helpers
    dep.stop(timeout=1.0)
    assert dep.report()[0]["stopped"] == "killed" and dep.report()[0]["returncode"] == -9
    assert dep.helper_report == [{"pid": child, "start": dep.helpers[child], "stopped": "terminated"}]
    assert dep.leftovers() == [] and not process_alive(child)


# -- Flower's simulation runtime (Ray) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
# Ray leaks Popen and /dev/null file objects (its processes are gone after shutdown); they warn when collected
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_flower_simulation_matches_simulate(tmp_path):
    """run_simulation (Ray backend, num_cpus=1 per client, 10 virtual SuperNodes = the 10 users) gives the same
    final model, bit for bit, as run_federated / simulate: FedProx, user partition, 3 of 10 clients a round."""
    pytest.importorskip("ray", reason="ray (flwr[simulation]) is not installed")
    cfg = _cfg(algorithm="fedprox", partition="user")
    ray_dir = tempfile.mkdtemp(prefix="tnray")  # short: Ray's socket paths must fit in 107 bytes
    try:
        res = fl.run_flower_simulation(cfg, tmp_path / "fl", num_cpus=2, cpus_per_client=1, ray_temp_dir=ray_dir)
        assert any(Path(ray_dir).glob("session_*")), "Ray did not use the given temp dir"
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
        gc.collect()  # collect Ray's leaked objects now, under this test's warning filters
    ref = run_federated(cfg, tmp_path / "ref", progress=False)
    _assert_bitwise(tmp_path / "ref" / "model", tmp_path / "fl" / "model")
    assert [r["selected"] for r in res.rows] == [r["selected"] for r in ref.rows]
    assert [r["train_loss"] for r in res.rows] == [r["train_loss"] for r in ref.rows]
    assert res.metrics["runtime"] == "simulation" and res.metrics["num_nodes"] == 10
    assert res.metrics["shared_nodes"] == 0


# -- a real deployment on loopback ---------------------------------------------------------------------
def _can_bind() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_loopback_deployment(tmp_path):
    """SuperLink + 2 SuperNodes (separate processes, TLS with a CA made at launch), `flwr run`, 3 rounds: the
    central test loss falls and accuracy rises over the initial model, the model equals run_federated's
    bitwise, and every process started (and every helper Flower started) has ended."""
    if not _can_bind():
        pytest.skip("cannot bind a loopback TCP port here")
    if not Path("/proc/self/stat").exists():
        pytest.skip("the launcher reads /proc (Linux only)")
    from trustnlp.federated.flower_deploy import process_alive

    bindir = Path(sys.executable).parent
    for exe in ("flower-superlink", "flower-supernode", "flwr"):
        if not (bindir / exe).exists():
            pytest.skip(f"{exe} is not installed next to {sys.executable}")
    out = tmp_path / "dep"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cp = subprocess.run([sys.executable, "-m", "trustnlp.federated.flower_deploy", "up", "--nodes", "2", "--rounds", "3",
                         "--out", str(out), "--timeout", "180"], capture_output=True, text=True, timeout=225, env=env,
                        check=False)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-6000:]
    deploy = json.loads((out / "deploy.json").read_text())
    assert deploy["run_status"] == "finished:completed" and deploy["partition_ids"]
    rounds = deploy["per_round"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[-1]["test_loss"] < rounds[0]["test_loss"]
    assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"]
    # every round trained both clients, each on the node holding its partition
    results = json.loads((out / "results.json").read_text())
    parts = {int(k): v for k, v in results["metrics"]["node_partitions"].items()}
    assert sorted(parts.values()) == [0, 1] and results["metrics"]["runtime"] == "deployment"
    for r in results["rows"]:
        assert r["selected"] == [0, 1] and [parts[n] for n in r["nodes"]] == r["selected"]
    # TLS: the SuperLink served HTTPS only; the nodes connected with the CA as root certificate
    assert "Uvicorn running on https://127.0.0.1" in Path(deploy["processes"][0]["log"]).read_text()
    # all processes ended
    names = [p["name"] for p in deploy["processes"]]
    assert names == ["superlink", "supernode-0", "supernode-1"]
    assert deploy["leftover_pids"] == []
    for p in deploy["processes"] + deploy["helpers"]:
        assert not process_alive(p["pid"], p["start"]), p
    assert all(p["returncode"] is not None for p in deploy["processes"])
    # the deployment trains the same model as the in-process simulator
    cfg = FederatedConfig(**json.loads((out / "deploy" / "config.json").read_text()))
    run_federated(cfg, tmp_path / "ref", progress=False)
    _assert_bitwise(tmp_path / "ref" / "model", out / "model")
