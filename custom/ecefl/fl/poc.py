"""`ecefl poc ...`: the real NVFlare server and hospital clients on one machine (loopback), driven through the
FLARE API (the admin console's API). Every step is also possible by hand: see README "POC".

The POC services run with the Python of the `nvflare` command that starts them, so we always start the one
beside this interpreter (the project's venv), or a job importing torch/monai would fail at the sites.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ADMIN = "admin@nvidia.com"
PROJECT = "example_project"


class PocError(RuntimeError):
    pass


def nvflare_cmd() -> str:
    exe = Path(sys.executable).parent / "nvflare"
    return str(exe) if exe.exists() else "nvflare"


def prod_dir(workspace: Path) -> Path:
    return Path(workspace).resolve() / PROJECT / "prod_00"


def _state_file(workspace: Path) -> Path:
    return Path(workspace).resolve() / "ecefl_poc.json"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# After a job's workflow ends, NVFlare's server waits this long for every site's job outcome before it publishes
# the job's final status (its default, 900 s, keeps a job whose site hung "RUNNING" for 15 min after it finished).
# A server-process setting, read from the environment (docs/DEPLOY.md §7).
CLIENT_OUTCOME_WAIT_ENV = "NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT"
CLIENT_OUTCOME_WAIT_S = 60


def _env(workspace: Path) -> dict:
    env = dict(os.environ)
    env["NVFLARE_POC_WORKSPACE"] = str(Path(workspace).resolve())
    env.setdefault(CLIENT_OUTCOME_WAIT_ENV, str(CLIENT_OUTCOME_WAIT_S))
    return env


def _run(args: list[str], workspace: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([nvflare_cmd(), *args], env=_env(workspace), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PocError(f"`nvflare {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                       f"{proc.stderr[-2000:]}")
    return proc


def prepare(workspace, datalists: dict[str, Path], port: int = 8002, privacy: str | Path | None = None,
            heartbeat_timeout: int | None = None, large_updates: bool = False) -> dict:
    """A POC workspace with one client per hospital, each with its site-local data config (and, if given, the
    site privacy policy `privacy` as its local/privacy.json). heartbeat_timeout: seconds without a heartbeat
    before the server declares a site dead (server local/resources.json; NVFlare's default is 600).
    large_updates: every participant gets the streaming timeouts for gpu-preset updates (LARGE_UPDATE_STREAMING)."""
    if privacy:
        from .site_config import load_privacy_policy
        try:
            load_privacy_policy(privacy)
        except ValueError as exc:
            raise PocError(str(exc)) from exc
    workspace = Path(workspace).resolve()
    if port_in_use(port):
        raise PocError(f"port {port} is in use: a POC (or another server) from an earlier run is still running"
                       f"; stop it with `ecefl poc stop --workspace {workspace}` or choose --port")
    workspace.mkdir(parents=True, exist_ok=True)
    project = {
        "api_version": 3, "name": PROJECT, "description": "ecefl POC: hospitals on one machine",
        "participants": [
            {"name": "server", "type": "server", "org": "ecefl", "fed_learn_port": port,
             "default_host": "localhost"},
            {"name": ADMIN, "type": "admin", "org": "ecefl", "role": "project_admin"},
            *({"name": site, "type": "client", "org": "ecefl"} for site in datalists),
        ],
        "builders": [
            {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
             "args": {"template_file": ["master_template.yml"]}},
            {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }
    import tempfile
    import yaml
    with tempfile.TemporaryDirectory() as tmp:  # `poc prepare --force` wipes the workspace: keep it outside
        project_file = Path(tmp) / "project.yml"
        project_file.write_text(yaml.safe_dump(project, sort_keys=False))
        _run(["poc", "prepare", "-i", str(project_file), "--force"], workspace)
    (workspace / "project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    prod = prod_dir(workspace)
    if heartbeat_timeout:
        set_server_heartbeat_timeout(prod / "server", heartbeat_timeout)
    if large_updates:
        for participant in ("server", *datalists):
            set_streaming_timeouts(prod / participant)
    for site, datalist in datalists.items():
        local = prod / site / "local"
        local.mkdir(parents=True, exist_ok=True)
        if privacy:
            shutil.copy2(privacy, local / "privacy.json")
        if not datalist:
            continue  # a site without data: its jobs fail with a message naming the missing setting
        (local / "ecefl_site.json").write_text(json.dumps({"datalist": str(Path(datalist).resolve())}, indent=1))
    state = {"workspace": str(workspace), "port": port, "sites": list(datalists), "admin": str(prod / ADMIN)}
    _state_file(workspace).write_text(json.dumps(state, indent=1))
    return state


def set_server_heartbeat_timeout(server_dir: Path, seconds: int) -> None:
    """A dead site (machine down, no heartbeats) is detected by the server process itself, with the
    "heart_beat_timeout" of its local/resources.json (site-local configuration, not part of the signed kit)."""
    local = Path(server_dir) / "local"
    path = local / "resources.json"
    config = json.loads((path if path.is_file() else local / "resources.json.default").read_text())
    for server in config.get("servers", []):
        server["heart_beat_timeout"] = int(seconds)
    path.write_text(json.dumps(config, indent=2))


# NVFlare's defaults (300 s / 60 s / 30 s) abort a 278 MiB gpu-preset update that crawls over a slow hospital
# link; these are process-level settings read from each participant's local/comm_config.json (docs/DEPLOY.md §8)
LARGE_UPDATE_STREAMING = {"streaming_read_timeout": 900, "streaming_ack_progress_timeout": 600,
                          "streaming_send_timeout": 120}


def set_streaming_timeouts(participant_dir: Path, values: dict | None = None) -> Path:
    """Merge the streaming timeouts into a participant's (startup kit's) local/comm_config.json, keeping what
    provisioning wrote there (internal listener sections)."""
    local = Path(participant_dir) / "local"
    if not local.is_dir():
        raise PocError(f"{participant_dir} has no local/ folder: give a participant's startup kit folder "
                       "(the one holding startup/ and local/)")
    path = local / "comm_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise PocError(f"{path} is not valid JSON ({exc}); fix or remove it first") from exc
    config.update(values or LARGE_UPDATE_STREAMING)
    path.write_text(json.dumps(config, indent=2))
    return path


def load_state(workspace) -> dict:
    path = _state_file(workspace)
    if not path.is_file():
        raise PocError(f"no POC prepared in {Path(workspace).resolve()}; run `ecefl poc prepare` first")
    return json.loads(path.read_text())


def start(workspace, timeout: float = 120.0, services: list[str] | None = None) -> dict:
    """Start the POC (or only `services`, e.g. a restarted server or site) and wait until every site is
    connected."""
    state = load_state(workspace)
    services = list(services or [])
    _check_services(state, services)
    if (not services or "server" in services) and port_in_use(state["port"]):
        raise PocError(f"port {state['port']} is already in use: a stale POC is running; run `ecefl poc stop "
                       f"--workspace {state['workspace']}` first (it is not reused silently)")
    _run(["poc", "start", *[a for s in services for a in ("-p", s)], "--no-wait"], Path(state["workspace"]),
         timeout=120)
    deadline = time.time() + timeout
    connected: list[str] = []
    while time.time() < deadline:
        try:
            connected = connected_sites(workspace)
            if set(state["sites"]) <= set(connected):
                return {"connected": connected, **state}
        except Exception:
            pass
        time.sleep(2)
    raise PocError(f"POC started but only {connected} of {state['sites']} connected within {timeout:.0f}s; "
                   f"see {prod_dir(Path(state['workspace']))}/<site>/log.txt")


def _check_services(state: dict, services: list[str]) -> None:
    unknown = [s for s in services if s != "server" and s not in state["sites"]]
    if unknown:
        raise PocError(f"unknown POC service(s) {unknown}; choose server or one of {state['sites']}")


def connected_sites(workspace) -> list[str]:
    with session(workspace) as s:
        return sorted(c.name for c in s.get_connected_client_list())


def session(workspace):
    """The FLARE API secure session of the POC's project admin (a context manager, as for any admin kit)."""
    from .admin import session as admin_session
    return admin_session(load_state(workspace)["admin"], ADMIN, timeout=20.0)


def submit(workspace, job_dir: Path) -> str:
    from .admin import submit as admin_submit
    return admin_submit(load_state(workspace)["admin"], job_dir, user=ADMIN)


def wait(workspace, job_id: str, timeout: float = 3600.0) -> dict:
    """Follow the job (its status changes on stderr) until it ends; PocError with the sites' error lines unless
    it completed."""
    from .admin import AdminError, wait as admin_wait
    try:
        return admin_wait(load_state(workspace)["admin"], job_id, timeout=timeout, user=ADMIN, poll=2.0)
    except AdminError as exc:
        raise PocError(f"{exc}\n{_errors(workspace, job_id)}") from exc


def _errors(workspace, job_id: str) -> str:
    state = load_state(workspace)
    prod = prod_dir(Path(state["workspace"]))
    lines = []
    for site in ["server", *state["sites"]]:
        for name in ("error_log.txt", "log.txt"):
            path = prod / site / job_id / name
            if path.is_file():
                errs = [l for l in path.read_text(errors="replace").splitlines()
                        if "ERROR" in l or "Error" in l][-4:]
                if errs:
                    lines.append(f"  {site}:\n    " + "\n    ".join(errs))
                    break
    return "\n".join(lines) or f"  (no error lines found under {prod}/<site>/{job_id}/)"


def download(workspace, job_id: str, out) -> Path:
    from .admin import download as admin_download
    return admin_download(load_state(workspace)["admin"], job_id, out, user=ADMIN)


def server_run_dir(workspace, job_id: str) -> Path:
    """Where the POC server keeps a job's run folder (its ecefl/ artifacts are written there every round)."""
    return prod_dir(Path(load_state(workspace)["workspace"])) / "server" / job_id


def kill(workspace, service: str) -> list[int]:
    """Fault drill: SIGKILL one POC service ("server" or a site) with its restart loop and job processes, as if
    the machine went down. Returns the killed PIDs; `ecefl poc start --service NAME` brings it back."""
    state = load_state(workspace)
    _check_services(state, [service])
    killed = kill_participant(prod_dir(Path(state["workspace"])) / service)
    if not killed:
        raise PocError(f"{service} is not running in the POC at {state['workspace']}")
    return killed


def kill_participant(folder: Path) -> list[int]:
    """SIGKILL the NVFlare participant started from a startup kit or POC folder: its restart loop
    (daemon_pid.fl) first, or it would restart the process, then the process (pid.fl) and its job processes."""
    import psutil
    procs = []
    for name in ("daemon_pid.fl", "pid.fl"):
        path = Path(folder) / name
        text = path.read_text().strip() if path.is_file() else ""
        if text.isdigit():
            try:
                proc = psutil.Process(int(text))
                procs += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    killed = []
    for proc in procs:
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    for name in ("daemon_pid.fl", "pid.fl"):
        (Path(folder) / name).unlink(missing_ok=True)
    return killed


def stop(workspace, timeout: float = 60.0) -> None:
    state = load_state(workspace)
    try:
        _run(["poc", "stop"], Path(state["workspace"]), timeout=120)
    except (PocError, subprocess.TimeoutExpired) as exc:
        # e.g. after a server crash NVFlare's stop can fail on a job it restored as running: stop the processes
        print(f"`nvflare poc stop` failed ({str(exc).splitlines()[0]}); stopping the POC processes directly",
              file=sys.stderr)
        prod = prod_dir(Path(state["workspace"]))
        for service in ("server", *state["sites"]):
            kill_participant(prod / service)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not port_in_use(state["port"]):
            time.sleep(5)  # restart loops linger a few seconds after the port closes
            break
        time.sleep(1)
    # whatever NVFlare's stop left running (measured: a site's job process that had been stopped and continued
    # kept running after `nvflare poc stop`): every process started from this POC's folders
    leftovers = kill_processes_under(prod_dir(Path(state["workspace"])))
    if leftovers:
        print(f"ended {len(leftovers)} POC process(es) that NVFlare's stop left running", file=sys.stderr)
    if port_in_use(state["port"]):
        raise PocError(f"POC stop requested but port {state['port']} is still in use after {timeout:.0f}s")


def processes_under(folder: Path) -> list:
    """Running processes whose command line names this folder (NVFlare participants, their restart loops and
    job processes are all started with their startup-kit folder as an argument)."""
    import os

    import psutil
    folder = str(Path(folder).resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(folder in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_processes_under(folder: Path) -> list[int]:
    import psutil
    procs = processes_under(folder)
    for proc in procs:
        try:
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [proc.pid for proc in procs]
