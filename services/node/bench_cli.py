"""`exo bench --config FILE.yaml`: measure a running node through its gateway (the I/O shell of bench_plan.py).

For each placement in the config it uses a ready instance that matches, or places one (POST /instances) and
deletes it afterwards. Requests are streamed OpenAI completions, so they are what any client sees (and what the
inference log records). Memory per node is sampled from this machine (psutil) and from the peers discovery hears
(`<state-dir>/peers.json`, the same beacons `exo peers` shows): the gateway does not publish node facts.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import psutil

from services.node.bench_plan import BadConfig, Case, RequestTiming, case_stats, cases, parse_config, peak_used
from services.node.bench_plan import ratios as baseline_ratios
from services.node.bench_table import progress_line, table
from shared.config import default_state_dir, parse_with_environment
from shared.peers import read_table

PLACE_TIMEOUT_S = 600.0  # a first placement downloads or converts the model
REQUEST_TIMEOUT_S = 300.0
MEMORY_SAMPLE_S = 0.5
# One filler word is one token for the BPE tokenizers of the models we know; the usage the API returns is what
# the statistics use, so an estimate that is off changes the prompt a little, not the figures' truth.
FILLER = " the"


class Gateway:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {_error_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"cannot reach the gateway at {self.url}: {exc}") from None

    def stream(self, body: dict) -> RequestTiming:
        """One streamed completion: when each token arrived (seconds after sending) and the usage."""
        req = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(), method="POST",
                                     headers=self.headers)  # fmt: skip
        sent = time.perf_counter()
        times: list[float] = []
        usage: dict = {}
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                for raw in resp:
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if any(c.get("text") for c in chunk.get("choices", [])):
                        times.append(time.perf_counter() - sent)
        except urllib.error.HTTPError as exc:
            return RequestTiming([], 0, 0, error=f"{exc.code} {_error_message(exc.read())}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return RequestTiming(times, 0, 0, error=str(exc))
        return RequestTiming(times, usage.get("prompt_tokens", 0), usage.get("completion_tokens", len(times)))


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def matches(instance: dict, case: Case) -> bool:
    return (instance["model_id"] == case.model
            and case.strategy in ("auto", instance["strategy"]) and case.backend in ("auto", instance["backend"])
            and len(instance["shards"]) == case.nodes)  # fmt: skip


def ensure_instance(gw: Gateway, case: Case) -> tuple[str, bool]:
    """(instance id, placed by us): a matching instance (a ready one first; one that is loading, e.g. a runner
    restarting, is waited for), else a new one once it is ready."""
    found = sorted((i for i in gw.call("GET", "/instances")["instances"] if matches(i, case)),
                   key=lambda i: not i["ready"])  # fmt: skip
    if found:
        return wait_ready(gw, found[0]["instance_id"], ours=False), False
    placed = gw.call("POST", "/instances", {"model": case.model, "strategy": case.strategy, "backend": case.backend,
                                            "min_nodes": case.nodes}, timeout=60)  # fmt: skip
    return wait_ready(gw, placed["instance_id"], ours=True), True


def wait_ready(gw: Gateway, iid: str, ours: bool) -> str:
    """Wait until the instance is ready; one we placed is deleted when it fails or never gets ready."""
    deadline = time.monotonic() + PLACE_TIMEOUT_S
    while time.monotonic() < deadline:
        now = {i["instance_id"]: i for i in gw.call("GET", "/instances")["instances"]}
        if iid not in now:
            raise RuntimeError(f"instance {iid} went away while loading")
        if now[iid]["ready"]:
            return iid
        failed = [r for r in now[iid]["runners"] if r and r["phase"] == "failed"]
        if failed and ours:
            gw.call("DELETE", f"/instances/{iid}")
            raise RuntimeError(f"instance {iid} failed to load: {(failed[0].get('detail') or '').splitlines()[:1]}")
        time.sleep(1.0)
    if ours:
        gw.call("DELETE", f"/instances/{iid}")
    raise RuntimeError(f"instance {iid} was not ready within {PLACE_TIMEOUT_S:.0f} s")


class MemorySampler:
    """Samples {node: (total, available)} in a thread while a case runs."""

    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = state_dir
        self.samples: list[dict[str, tuple[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, tuple[int, int]]:
        vm = psutil.virtual_memory()
        local = "this-host"
        out: dict[str, tuple[int, int]] = {}
        if self.state_dir is not None and (table := read_table(self.state_dir)) is not None:
            local = table.node_id
            out = {p.node_id: (p.memory_total, p.memory_available) for p in table.peers}
        return out | {local: (vm.total, vm.available)}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(MEMORY_SAMPLE_S)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_case(gw: Gateway, case: Case, on_round: Callable[[], None], serial: list[int]) -> list:
    """Warm-up, then the rounds: [(wall seconds, [RequestTiming])]. Each prompt starts with its own number, so
    no request finds another's prompt in the cache and every prefill is a real one."""

    def body() -> dict:
        serial[0] += 1
        prompt = f"Request {serial[0]}:" + FILLER * max(1, case.prompt_tokens - 4)
        return {"model": case.model, "prompt": prompt, "max_tokens": case.max_tokens, "stream": True,
                "temperature": 0.7, "seed": serial[0], "stream_options": {"include_usage": True}}  # fmt: skip

    for _ in range(case.warmup):
        gw.stream(body())
    rounds = []
    with ThreadPoolExecutor(case.concurrency) as pool:
        for _ in range(case.repeats):
            bodies = [body() for _ in range(case.concurrency)]
            start = time.perf_counter()
            timings = list(pool.map(gw.stream, bodies))
            rounds.append((time.perf_counter() - start, timings))
            on_round()
    return rounds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exo bench", description="Benchmark a running node through its gateway.")
    p.add_argument("--config", type=Path, required=True, help="YAML file of the cases (see bench_simple.yaml)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the node's gateway (default http://127.0.0.1:8080)")
    p.add_argument("--api-key", default=None, help="the gateway's API key (env EXO_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (no table, no progress)")
    p.add_argument("--baseline", type=Path, default=None, help="a saved --json run: show this run's figures as ratios")
    p.add_argument("--state-dir", type=Path, default=None, help="the node's state dir, for peers' memory (default ~/.exo)")
    p.add_argument("--node-name", default=None, help="the node of that name on this machine")
    return p


def load_inputs(args: argparse.Namespace) -> tuple[list[Case], list[dict] | None]:
    import yaml  # type: ignore[import-untyped]  # only here: the node itself does not need it

    try:
        config = parse_config(yaml.safe_load(args.config.read_text()))
        baseline = json.loads(args.baseline.read_text())["rows"] if args.baseline else None
    except OSError as exc:
        raise BadConfig(f"cannot read {exc.filename}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BadConfig(f"{args.config} is not valid YAML: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadConfig(f"{args.baseline} is not a saved `exo bench --json` run: {exc}") from None
    return cases(config), baseline


def delete_placed(gw: Gateway, iid: str) -> None:
    try:
        gw.call("DELETE", f"/instances/{iid}")
    except RuntimeError as exc:
        print(f"exo bench: could not delete instance {iid} it placed: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    args, _ = parse_with_environment(parser(), argv, only=frozenset({"api_key"}))  # EXO_API_KEY
    try:
        todo, baseline = load_inputs(args)
    except BadConfig as exc:
        print(f"exo bench: {exc}", file=sys.stderr)
        return 2
    gw = Gateway(args.url, args.api_key)
    try:
        gw.call("GET", "/health")
    except RuntimeError as exc:  # one clear line rather than the same failure in every case's row
        print(f"exo bench: {exc}", file=sys.stderr)
        return 2
    state_dir = (args.state_dir or (default_state_dir() / "nodes" / args.node_name if args.node_name
                                    else default_state_dir())).expanduser()  # fmt: skip
    rows: list[dict] = []
    total = sum(c.repeats for c in todo)
    done = [0]
    serial = [secrets.randbelow(10**9)]  # prompts differ from every earlier run's too (the runner caches prefixes)
    show = not args.json and sys.stderr.isatty()

    def tick() -> None:
        done[0] += 1
        if show:
            print("\r" + progress_line(done[0], total, todo_case[0].key()), end="", file=sys.stderr, flush=True)

    placed: dict[tuple, str] = {}
    todo_case = [todo[0]]
    try:
        for case in todo:
            todo_case[0] = case
            row: dict[str, Any] = {"case": case.key()} | msgspec.to_builtins(case)
            where = (case.model, case.strategy, case.backend, case.nodes)
            for done_with in [w for w in placed if w != where]:  # cases come grouped by placement: free its memory
                delete_placed(gw, placed.pop(done_with))
            try:
                iid, ours = ensure_instance(gw, case)
                if ours:
                    placed[where] = iid
                with MemorySampler(state_dir if (state_dir / "peers.json").exists() else None) as memory:
                    rounds = run_case(gw, case, tick, serial)
                row |= {"instance": iid} | case_stats(rounds) | {"peak_memory": peak_used(memory.samples)}
            except RuntimeError as exc:
                row |= {"error": str(exc)}
                done[0] += case.repeats
            rows.append(row)
    finally:
        for iid in placed.values():
            delete_placed(gw, iid)
        if show:
            print("\r" + " " * 100 + "\r", end="", file=sys.stderr)
    result: dict[str, Any] = {"url": args.url, "finished_at": time.time(), "rows": rows}
    if baseline is not None:
        result["ratios"] = baseline_ratios(rows, baseline)
    print(json.dumps(result, indent=2) if args.json else table(rows, result.get("ratios")))
    return 1 if any(r.get("error") or r.get("errors") for r in rows) else 0
