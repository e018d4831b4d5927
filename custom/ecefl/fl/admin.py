"""The coordinating centre's side of a federation: submit, list, follow, abort and download jobs from an admin
startup kit through the FLARE API (mutual TLS with the kit's certificate). The POC uses the same functions with
its project admin's kit; a provisioned federation with the kit NVFlare's provisioning (or the dashboard) gave the
admin.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

TERMINAL = ("FINISHED", "FAILED", "ABORTED")


class AdminError(RuntimeError):
    pass


def kit_user(kit) -> str:
    """An admin kit's folder is named after its user (e.g. admin@hospital.org), as provisioning writes it."""
    kit = Path(kit)
    if not (kit / "startup").is_dir():
        raise AdminError(f"{kit} is not an admin startup kit (no startup/ folder); give the folder that "
                         "provisioning made for the admin user, e.g. prod_00/admin@coordinating-center.org")
    return kit.name


class session:
    """FLARE API secure session of the admin whose startup kit is `kit`."""

    def __init__(self, kit, user: str | None = None, timeout: float = 30.0):
        self.kit, self.user, self.timeout = Path(kit).resolve(), user or kit_user(kit), timeout

    def __enter__(self):
        from nvflare.fuel.flare_api.flare_api import new_secure_session
        try:  # NVFlare prints "Connecting to FLARE ..." on stdout, which carries only our results
            with contextlib.redirect_stdout(sys.stderr):
                self.s = new_secure_session(self.user, str(self.kit), timeout=self.timeout)
        except Exception as exc:
            raise AdminError(f"cannot log in to the federation as {self.user} with the kit {self.kit} "
                             f"({type(exc).__name__}: {exc}); is the server running and reachable?") from exc
        return self.s

    def __exit__(self, *exc):
        self.s.close()


def submit(kit, job_dir: Path, user: str | None = None) -> str:
    with session(kit, user) as s:
        return s.submit_job(str(job_dir))


def status(kit, job_id: str | None = None, user: str | None = None) -> list[dict]:
    """Every job the admin can see (newest first), or one job's meta."""
    with session(kit, user) as s:
        if job_id:
            return [s.get_job_meta(job_id)]
        return s.list_jobs(detailed=True, reverse=True)


def errors(kit, job_id: str, user: str | None = None) -> dict:
    """Processing errors NVFlare recorded for the job, by participant (server and each site)."""
    with session(kit, user) as s:
        found = {}
        for target in ("server", "client"):
            try:
                found.update(s.show_errors(job_id, target) or {})
            except Exception as exc:  # a finished job's site may be gone: say so instead of failing
                found[target] = f"not available ({type(exc).__name__})"
        return found


def wait(kit, job_id: str, timeout: float = 3600.0, progress: bool = True, user: str | None = None,
         poll: float = 5.0) -> dict:
    """Follow a job until it ends: its status and elapsed time on one line; raises AdminError unless it
    completed."""
    t0, meta, last = time.time(), {}, None
    with session(kit, user) as s:
        while True:
            meta = s.get_job_meta(job_id)
            state = str(meta.get("status", ""))
            if progress and state != last:
                print(f"job {job_id}: {state} after {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
                last = state
            if any(state.startswith(t) for t in TERMINAL):
                break
            if time.time() - t0 > timeout:
                raise AdminError(f"job {job_id} still {state} after {timeout:.0f} s; follow it with `ecefl fl "
                                 f"status` or stop it with `ecefl fl abort {job_id}`")
            time.sleep(poll)
    if meta.get("status") != "FINISHED:COMPLETED":
        raise AdminError(f"job {job_id} ended with status {meta.get('status')}; download it (`ecefl fl download`) "
                         "and read pooled_metrics.json's events and the sites' logs")
    return meta


def abort(kit, job_id: str, user: str | None = None) -> None:
    with session(kit, user) as s:
        s.abort_job(job_id)


def download(kit, job_id: str, out, user: str | None = None) -> Path:
    """The job's server-side results; pooled_metrics.json and the global models copied to OUT's top level."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with session(kit, user) as s:
        folder = Path(s.download_job_result(job_id, destination=str(out / "nvflare_result")))
    for name in ("pooled_metrics.json", "global_model.pt", "best_global_model.pt"):
        found = next(iter(folder.rglob(f"ecefl/{name}")), None)
        if found:
            shutil.copy2(found, out / name)
    cse = next(iter(folder.rglob("cross_site_val/cross_val_results.json")), None)
    if cse:
        shutil.copy2(cse, out / "cross_site.json")
    return out
