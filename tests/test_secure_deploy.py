"""A provisioned, mutually TLS-authenticated deployment on loopback, started from its startup kits as hospitals
would: poc/project.yml (server renamed to localhost for this machine) -> `nvflare provision` -> server, two
hospitals and the project admin. Checks that the admin can submit and finish a job through the FLARE API, that a
client holding a certificate from another CA or no certificate cannot join, and that a role without job
submission rights (org_admin) is refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from conftest import preprocessed_sites, wait_for
from ecefl.cli import main as ecefl_main
from ecefl.fl import poc
from ecefl.fl.jobs import build_recipe
from ecefl.plan import get_plan

ROOT = Path(__file__).resolve().parents[1]
PORT = 8146
ADMIN = "admin@coordinating-center.org"
ORG_ADMIN = "it@hospital-a.org"


def _provision(project: dict, workspace: Path) -> Path:
    workspace.mkdir(parents=True, exist_ok=True)
    project_file = workspace.parent / f"{workspace.name}.yml"
    project_file.write_text(yaml.safe_dump(project, sort_keys=False))
    nvflare = str(Path(sys.executable).parent / "nvflare")
    subprocess.run([nvflare, "provision", "-p", str(project_file), "-w", str(workspace)], check=True,
                   capture_output=True, text=True, timeout=120)
    return workspace / project["name"] / "prod_00"


def _loopback_project(extra_clients: tuple[str, ...] = ()) -> dict:
    """poc/project.yml as shipped, with the server reachable on this machine's loopback."""
    project = yaml.safe_load((ROOT / "poc" / "project.yml").read_text())
    for p in project["participants"]:
        if p["type"] == "server":
            p["name"], p["fed_learn_port"] = "localhost", PORT
    project["participants"] += [{"name": c, "type": "client", "org": "elsewhere"} for c in extra_clients]
    return project


def _start_kit(kit: Path, log_tls_refusals: bool = False) -> None:
    """`startup/start.sh` of a kit, with this interpreter's environment first on PATH (it runs `python3`).
    log_tls_refusals: NVFlare's http transport does TLS in Python's asyncio, which reports a refused handshake
    only in its debug mode, to NVFlare's asyncio logger at DEBUG (DEPLOY.md): with both, the participant's
    log.txt names each refusal."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if log_tls_refusals:
        env["PYTHONASYNCIODEBUG"] = "1"
        local = kit / "local"
        config = json.loads((local / "log_config.json.default").read_text())
        config.setdefault("loggers", {})["nvflare.fuel.f3.drivers.aio_context"] = {"level": "DEBUG"}
        (local / "log_config.json").write_text(json.dumps(config, indent=1))
    subprocess.run(["bash", str(kit / "startup" / "start.sh")], env=env, cwd=kit, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _tls_request(port: int, root_ca: Path, cert: Path, key: Path) -> bytes:
    """An HTTP request over mutual TLS with this certificate; what came back (b"" or the TLS error when refused)."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(root_ca))
    ctx.check_hostname = False  # the server's certificate names the provisioned host; the CA check stays on
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("localhost", port), timeout=20) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return tls.recv(200)
        except (ssl.SSLError, OSError) as exc:
            return repr(exc).encode()


def _wait_for_log(path: Path, offset: int, needle: str, timeout: float = 90) -> str:
    """The first line at or after byte offset that holds needle (polled, no fixed sleep)."""
    def found():
        with path.open("rb") as fh:
            fh.seek(offset)
            return next((line for line in fh.read().decode(errors="replace").splitlines() if needle in line), None)
    return wait_for(found, timeout, f"a line with {needle!r} in {path}")


def _connected(session) -> set[str]:
    return {c.name for c in session.get_connected_client_list()}


def _wait_connected(session, expected: set[str], timeout: float = 120) -> set[str]:
    deadline, seen = time.time() + timeout, set()
    while time.time() < deadline:
        seen = _connected(session)
        if expected <= seen:
            return seen
        time.sleep(2)
    raise AssertionError(f"only {seen} of {expected} connected within {timeout}s")


def _admin_session(prod: Path, user: str):
    from nvflare.fuel.flare_api.flare_api import new_secure_session
    return closing(new_secure_session(user, str(prod / user), timeout=30.0))


def test_tls_deployment_admits_only_provisioned_participants_and_roles(secure_net, tmp_path, capsys):
    prod, foreign_prod = secure_net["prod"], secure_net["foreign"]
    with _admin_session(prod, ADMIN) as s:
        assert _wait_connected(s, {"hospital-a", "hospital-b"}) == {"hospital-a", "hospital-b"}

    # the coordinating centre runs the federation from its admin kit: submit, list, follow, download, abort
    kit = ["--admin-kit", str(prod / ADMIN)]
    capsys.readouterr()
    assert ecefl_main(["fl", "submit", "mae_pretrain", *kit, "--preset", "test-tiny", "--rounds", "1",
                       "--workdir", str(tmp_path / "admin")]) == 0  # --min-sites: the 2 connected sites
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert ecefl_main(["fl", "status", *kit]) == 0
    assert job_id in capsys.readouterr().out
    assert ecefl_main(["fl", "wait", job_id, *kit, "--timeout", "600"]) == 0
    assert f"job {job_id}: FINISHED:COMPLETED" in capsys.readouterr().out
    assert ecefl_main(["fl", "download", job_id, *kit, "--out", str(tmp_path / "dl")]) == 0
    report = json.loads((tmp_path / "dl" / "pooled_metrics.json").read_text())
    assert report["finished"] and report["rounds"][0]["n_sites"] == 2 and report["min_sites"] == 2
    assert ecefl_main(["fl", "submit", "ece_finetune", *kit, "--preset", "test-tiny", "--rounds", "20",
                       "--workdir", str(tmp_path / "admin")]) == 0
    long_job = capsys.readouterr().out.strip().splitlines()[-1]
    assert ecefl_main(["fl", "abort", long_job, *kit]) == 0
    assert ecefl_main(["fl", "wait", long_job, *kit, "--timeout", "300"]) == 1
    assert "ABORTED" in capsys.readouterr().err
    assert ecefl_main(["fl", "status", long_job, *kit]) == 0
    assert "ABORTED" in capsys.readouterr().out
    assert ecefl_main(["fl", "status", *kit, "--admin-kit", str(tmp_path)]) == 1  # not a kit: said so
    assert "not an admin startup kit" in capsys.readouterr().err
    recipe = build_recipe("mae_pretrain", get_plan("test-tiny"), rounds=1, min_sites=2, cross_site=False,
                          tracking=False)
    recipe.export(str(tmp_path / "job"))

    with _admin_session(prod, ADMIN) as s:
        assert _wait_connected(s, {"hospital-a", "hospital-b"}) == {"hospital-a", "hospital-b"}

        # a TLS client that trusts our root CA but presents hospital-c's certificate from another CA: only the
        # server's check of client certificates can keep it out. The server ends the handshake (no HTTP answer
        # reaches the client) and its log names the refusal. (NVFlare's own client with such a kit stops before
        # it connects, on its side: started below with the others.)
        server_log = prod / "localhost" / "log.txt"
        offset = server_log.stat().st_size
        forged = secure_net["forged"] / "startup"
        answer = _tls_request(PORT, forged / "rootCA.pem", forged / "client.crt", forged / "client.key")
        assert not answer.startswith(b"HTTP"), answer
        _wait_for_log(server_log, offset, "CERTIFICATE_VERIFY_FAILED")
        # NVFlare clients: that forged kit, a kit of another CA altogether (it distrusts our server too) and the
        # genuine kit without its certificate and key. None joins.
        for bad in (secure_net["forged"], foreign_prod / "hospital-c", secure_net["stripped"]):
            _start_kit(bad)
        deadline = time.time() + 10  # a short watch while they retry
        while time.time() < deadline:
            assert "hospital-c" not in _connected(s), "a client without a certificate of our CA joined"
            time.sleep(2)
        assert _connected(s) == {"hospital-a", "hospital-b"}

    # a role without the submit_job right is refused by the server's authorization policy
    from nvflare.fuel.flare_api.api_spec import AuthorizationError
    with _admin_session(prod, ORG_ADMIN) as s:
        with pytest.raises(AuthorizationError, match="not authorized"):
            s.submit_job(str(tmp_path / "job" / "mae_pretrain"))
    with _admin_session(prod, ADMIN) as s:
        assert len(s.list_jobs()) == 2  # the refused submission left no job behind


def _private_server_storage(server_kit: Path, storage: Path) -> None:
    """The provisioned server keeps jobs and snapshots under /tmp/nvflare by default (resources.json.default),
    shared by every server on the machine; give this one its own, as `nvflare poc prepare` does for a POC."""
    local = server_kit / "local"
    config = json.loads((local / "resources.json.default").read_text())
    config["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(storage / "snapshot-storage")
    for component in config["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(storage / "jobs-storage")
    (local / "resources.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def secure_net(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    if poc.port_in_use(PORT):
        pytest.fail(f"port {PORT} is in use: a previous secure-deployment test left a server running")
    sites = preprocessed_sites(root / "data", 2, 2, 0, seed=17)
    prod = _provision(_loopback_project(), root / "provision")
    foreign = _provision(_loopback_project(), root / "foreign")  # same names, another root CA
    stripped = root / "hospital-c-no-cert"
    shutil.copytree(prod / "hospital-c", stripped)
    for name in ("client.crt", "client.key"):
        (stripped / "startup" / name).unlink()
    # trusts the genuine root CA (so it accepts the server) but presents a certificate another CA signed: only
    # the server's check of client certificates can keep it out
    forged = root / "hospital-c-forged-cert"
    shutil.copytree(prod / "hospital-c", forged)
    for name in ("client.crt", "client.key"):
        shutil.copy2(foreign / "hospital-c" / "startup" / name, forged / "startup" / name)
    kits = [prod / "localhost", prod / "hospital-a", prod / "hospital-b", foreign / "hospital-c", stripped, forged]
    _private_server_storage(prod / "localhost", root / "server_storage")
    for site, datalist in sites.items():  # site-local data settings live in the kit's local/ folder
        (prod / site / "local" / "ecefl_site.json").write_text(json.dumps({"datalist": str(datalist)}))
    # the gpu preset's streaming timeouts, merged into what provisioning wrote to local/comm_config.json; the
    # participants below start and run a job with them
    provisioned = {k: (k / "local" / "comm_config.json").read_text() for k in kits[:3]
                   if (k / "local" / "comm_config.json").is_file()}
    assert ecefl_main(["fl", "large-updates", *map(str, kits[:3])]) == 0
    for kit in kits[:3]:
        merged = json.loads((kit / "local" / "comm_config.json").read_text())
        assert merged["streaming_read_timeout"] == 900
        assert all(merged.get(k) == v for k, v in json.loads(provisioned.get(kit, "{}")).items())
    try:
        _start_kit(kits[0], log_tls_refusals=True)
        for kit in kits[1:3]:
            _start_kit(kit)
        yield {"prod": prod, "foreign": foreign, "stripped": stripped, "forged": forged}
    finally:
        for kit in kits:
            poc.kill_participant(kit)
        deadline = time.time() + 30
        while poc.port_in_use(PORT) and time.time() < deadline:
            time.sleep(1)
