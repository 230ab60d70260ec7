"""Models by hub repo id, through huggingface-hub against a local mirror of the hub's file API (tests/hub_mirror.py;
the real hub cannot be reached here): card, download with progress, only a stage's files, resume after kill -9,
offline use, each bad input; and a node that places a model by repo id and answers a chat completion."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.cluster_secret import write_private
from tests.hub_mirror import HubMirror
from tests.nodes import REPO_ROOT, free_port, poll_until, wait_for
from tests.tiny_hub_model import build_tiny_llama, gguf_metadata

TINY = "test-org/tiny-llama"
BIG = "test-org/big-llama"  # the tiny model with a 24 MB padding tensor: long enough to kill mid-file
GATED = "test-org/gated-llama"
BERT = "test-org/bert-thing"
BROKEN = "test-org/broken-llama"  # listed, but its weight files answer 500
TWIN = "test-org/tiny-llama-twin"  # the same files as TINY under another id: not in any node's cache yet
TOOLS = "test-org/tiny-llama-tools"  # TINY with a chat template that renders tools in its own (hermes) format
# A hermes-style template (the card reads `<tool_call>`: tool_call_format "hermes"): the tools in a system turn,
# an assistant's calls as <tool_call> blocks of their `function` objects, tool results as turns of their own.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n"
    "Call a tool with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{%- if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
    "{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def mirror() -> Iterator[HubMirror]:
    root = Path(tempfile.mkdtemp(prefix="exo-hub-mirror-"))
    meta = gguf_metadata()
    tiny = build_tiny_llama(root / "tiny", meta)
    big = build_tiny_llama(root / "big", meta, extra_bytes=24 * 2**20)
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                                  "num_attention_heads": 1}))  # fmt: skip
    (bert / "model.safetensors").write_bytes(b"\0" * 64)
    hub = HubMirror()
    for repo, folder, gated in ((TINY, tiny, False), (BIG, big, False), (GATED, tiny, True), (BERT, bert, False),
                                (BROKEN, root / "broken", False), (TWIN, root / "twin", False),
                                (TOOLS, root / "tools", False)):  # fmt: skip
        if not folder.exists():
            shutil.copytree(tiny, folder)
        if repo == TOOLS:
            config = json.loads((folder / "tokenizer_config.json").read_text())
            (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TOOLS_TEMPLATE}))
        hub.add(repo, folder, gated)
    hub.broken = {BROKEN}
    hub.start()
    yield hub
    hub.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    return tmp_path / "hf"


def fetch(mirror_url: str, hf_home: Path, model: str, *layers: int, offline: bool = False,
          wait: bool = True) -> subprocess.Popen | list[dict]:  # fmt: skip
    env = {**os.environ, "HF_ENDPOINT": mirror_url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    argv = [sys.executable, "-m", "tests.integration.hub_fetch", model, *map(str, layers)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no output; stderr: {err[-2000:]}"
    return lines


def snapshot_of(lines: list[dict]) -> Path:
    return Path(lines[-1]["folder"])


def test_a_repo_id_gives_its_card_and_downloads_with_progress(mirror: HubMirror, hf_home: Path):
    lines = fetch(mirror.url, hf_home, TINY)
    assert isinstance(lines, list) and "folder" in lines[-1], lines[-1]
    card = lines[0]["card"]
    assert (card["n_layers"], card["hidden_size"], card["n_heads"], card["n_kv_heads"]) == (4, 64, 4, 2)
    assert (card["architecture"], card["context_length"]) == ("llama", 2048)
    assert card["tool_call_format"] == "none"  # SmolLM2's template (the tokenizer's) never mentions tools
    weights = {n: s for n, s in mirror.files(TINY).items() if n.endswith(".safetensors")}
    assert card["storage_bytes"] == sum(weights.values()) and card["files"] == weights
    progress = [line["progress"] for line in lines if "progress" in line]
    assert progress[-1]["state"] == "done"
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == sum(weights.values())
    assert all(p["bytes_total"] == progress[-1]["bytes_total"] for p in progress)
    folder = snapshot_of(lines)
    assert folder.is_relative_to(hf_home / "hub" / "models--test-org--tiny-llama" / "snapshots")
    held = sorted(p.name for p in folder.iterdir())
    assert "pytorch_model.bin" not in held and "README.md" not in held  # only what the runner reads
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", *weights} <= set(held)
    # the cache is huggingface-hub's own layout: the library finds the snapshot and each file with no network
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cache = str(hf_home / "hub")
    assert Path(snapshot_download(TINY, cache_dir=cache, local_files_only=True)) == folder
    for name in weights:
        assert Path(str(try_to_load_from_cache(TINY, name, cache_dir=cache))).read_bytes() == (
            mirror.repos[TINY] / name).read_bytes()  # fmt: skip


def test_a_pipeline_stage_fetches_only_the_files_of_its_layers(mirror: HubMirror, hf_home: Path):
    # 4 layers over 3 files: layer 0 is in file 1 (with the embedding); the final norm is in file 3
    lines = fetch(mirror.url, hf_home, TINY, 0, 1)
    assert isinstance(lines, list) and "folder" in lines[-1], lines[-1]
    held = {p.name for p in snapshot_of(lines).iterdir()}
    assert "model-00001-of-00003.safetensors" in held and "model-00003-of-00003.safetensors" in held
    assert "model-00002-of-00003.safetensors" not in held
    from services.worker.models.hub_files import holds_every_weight_file

    assert not holds_every_weight_file(snapshot_of(lines))


def test_a_download_killed_mid_file_resumes_where_it_stopped(mirror: HubMirror, hf_home: Path):
    mirror.throttle_bytes_per_s = 4 * 2**20  # per connection; several files come at once
    proc = fetch(mirror.url, hf_home, BIG, wait=False)
    assert isinstance(proc, subprocess.Popen)
    from services.worker.models.hub_blobs import incomplete_bytes

    repo = hf_home / "hub" / "models--test-org--big-llama"
    deadline = time.monotonic() + 60
    while incomplete_bytes(repo) < 3 * 2**20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    sizes = mirror.files(BIG)
    held = {}  # each file's part, as the kill left it (these files come by one request each: written in order)
    for name, size in sizes.items():
        part = repo / "blobs" / f"{mirror.etag(BIG, name)}.resume.incomplete"
        if part.exists() and 0 < part.stat().st_size < size:
            held[name] = part.stat().st_size
    assert held and max(held.values()) >= 2**20, f"not killed mid-file ({held})"
    mirror.throttle_bytes_per_s = None
    mirror.ranges.clear()
    lines = fetch(mirror.url, hf_home, BIG)
    assert isinstance(lines, list) and "folder" in lines[-1], lines[-1]
    resumed = {name: int(r.removeprefix("bytes=").split("-")[0]) for name, r in mirror.ranges}
    assert resumed == held, f"each part resumed from its end: {mirror.ranges} against {held}"
    for name in mirror.files(BIG):
        if name.endswith(".safetensors"):  # whole, and the same bytes as the mirror's
            digest = hashlib.sha256((snapshot_of(lines) / name).read_bytes()).digest()
            assert digest == hashlib.sha256((mirror.repos[BIG] / name).read_bytes()).digest(), name


def test_cached_files_are_used_offline_and_an_uncached_model_offline_is_a_clear_error(mirror: HubMirror, hf_home: Path):
    first = fetch(mirror.url, hf_home, TINY)
    assert isinstance(first, list) and "folder" in first[-1]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: any network use would fail
    for offline in (True, False):  # HF_HUB_OFFLINE, and a hub that is simply gone: the cache alone serves
        lines = fetch(dead, hf_home, TINY, offline=offline)
        assert isinstance(lines, list) and lines[-1].get("folder") == first[-1]["folder"], lines[-1]
    lines = fetch(dead, hf_home, BIG, offline=True)
    assert isinstance(lines, list) and lines[-1]["status"] == 503 and "HF_HUB_OFFLINE" in lines[-1]["error"]


@pytest.mark.parametrize(
    ("model", "status", "code", "says"),
    [
        ("test-org/no-such-model", 404, "model_not_found", "no model 'test-org/no-such-model'"),
        (GATED, 403, "gated_model", "is gated"),
        (BERT, 400, "unsupported_model", "architecture 'bert' is not one mlx-lm can load"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(mirror: HubMirror, hf_home: Path, model, status, code, says):
    lines = fetch(mirror.url, hf_home, model)
    assert isinstance(lines, list)
    assert (lines[-1]["status"], lines[-1]["code"]) == (status, code) and says in lines[-1]["error"], lines[-1]


def test_no_network_is_a_503(hf_home: Path):
    lines = fetch(f"http://127.0.0.1:{free_port()}", hf_home, TINY)
    assert isinstance(lines, list) and (lines[-1]["status"], lines[-1]["code"]) == (503, "hub_unreachable"), lines[-1]


def test_not_enough_disk_is_an_error_before_a_byte_is_written(tmp_path: Path):
    from services.worker.models import hub_download
    from shared.models import HubRepo, ModelCard

    card = ModelCard(TINY, TINY, HubRepo(TINY), 4, 64, 4, 2, 2048, 10**18, files={"model.safetensors": 10**18})
    folder = tmp_path / "snapshots" / "abc"
    folder.mkdir(parents=True)
    with pytest.raises(hub_download.DownloadFailed, match="not enough disk space for test-org/tiny-llama"):
        hub_download.check_disk(card, folder, ["model.safetensors"])
    assert not any(tmp_path.rglob("*.incomplete"))


def test_a_hub_failing_mid_download_is_the_reason(mirror: HubMirror, hf_home: Path):
    lines = fetch(mirror.url, hf_home, BROKEN)
    assert isinstance(lines, list) and "error" in lines[-1] and "500" in lines[-1]["error"], lines[-1]


def exo_models(node, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001 - a tests.nodes.Node
    """`exo models ... --state-dir <the node's>`, run by a user whose ~/.exo holds another cluster's secret
    (as on a machine that also ran `exo` alone): the node's state dir names the secret, not the home's."""
    home = node.state_dir.parent / "home-of-another-cluster"
    (home / ".exo").mkdir(parents=True, exist_ok=True)
    write_private(home / ".exo" / "cluster.secret", "a7" * 32)
    argv = [sys.executable, "-m", "services.node.cli", "models", *args, "--nats-url", node.nats_url,
            "--state-dir", str(node.state_dir)]  # fmt: skip
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def instance_of(node, model: str) -> dict | None:  # noqa: ANN001
    instances = httpx.get(f"{node.base_url}/instances", timeout=10).json()["instances"]
    return next((i for i in instances if i["model_id"] == model), None)


@pytest.mark.timeout(420)
def test_a_node_serves_a_model_by_repo_id_from_the_mirror(mirror: HubMirror, start_node, monkeypatch, tmp_path):
    import openai

    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    node = start_node("hub", "--model", TINY)  # `exo --model ORG/NAME`: placed at start, waited for until ready
    try:
        client = openai.OpenAI(base_url=node.api_url, api_key="none", timeout=120.0, max_retries=0)
        answer = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage and answer.usage.completion_tokens > 0
        assert TINY in [m.id for m in client.models.list().data]
        nodes = httpx.get(f"{node.base_url}/models", timeout=10).json()["nodes"]
        cached = {c["repo_id"]: c for n in nodes for c in n["cached"]}
        assert cached[TINY]["complete"] and cached[TINY]["size_bytes"] > 0
        done = [d for n in nodes for d in n["downloads"] if d["repo_id"] == TINY]
        assert done and done[0]["state"] == "done" and done[0]["bytes_done"] == done[0]["bytes_total"]
        check_bad_inputs(node)
        check_ollama_show(node)
        check_template_renders_the_tools(node, client, mirror)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-b"))
        second = start_node("hub-b", "--no-model", "--no-master", "--nats-url", node.nats_url)
        try:
            check_two_stage_pipeline(node, client)
        finally:
            second.stop()
        check_models_cli(node)
    finally:
        node.stop()


def check_bad_inputs(node) -> None:  # noqa: ANN001 - a tests.nodes.Node
    for model, status, code in (("test-org/no-such-model", 404, "model_not_found"), (GATED, 403, "gated_model"),
                                (BERT, 400, "unsupported_model"), ("not a model", 404, "model_not_found")):  # fmt: skip
        r = httpx.post(f"{node.base_url}/instances", json={"model": model}, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    # a hub that fails while the worker downloads: the instance says why, it does not stay "loading"
    r = httpx.post(f"{node.base_url}/instances", json={"model": BROKEN}, timeout=30)
    assert r.status_code == 201, r.text
    failed = wait_for(lambda: (i := instance_of(node, BROKEN)) and i["runners"][0]
                      and i["runners"][0]["phase"] == "failed" and i["runners"][0], 90, "the broken download fails", node)  # fmt: skip
    assert "500" in failed["detail"], failed  # type: ignore[index]
    httpx.delete(f"{node.base_url}/instances/{r.json()['instance_id']}", timeout=30)


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def check_template_renders_the_tools(node, client, mirror: HubMirror) -> None:  # noqa: ANN001
    """A model whose template has its own tool format gets the tools, earlier calls and tool results through its
    template (not our fallback system message): the prompt's token count is the template's own rendering."""
    from transformers import AutoTokenizer

    r = httpx.post(f"{node.base_url}/instances", json={"model": TOOLS}, timeout=30)
    assert r.status_code == 201, r.text
    wait_for(lambda: (i := instance_of(node, TOOLS)) and i["ready"], 180, "the tools model is ready", node)
    tokenizer = AutoTokenizer.from_pretrained(str(mirror.repos[TOOLS]))
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]  # fmt: skip
    for messages in (history[:1], history):
        answer = client.chat.completions.create(model=TOOLS, messages=messages, tools=[WEATHER_TOOL], max_tokens=1)
        as_template = [{**m, "content": m["content"] or ""} for m in messages]
        for m in as_template:
            for c in m.get("tool_calls", []):
                c["function"] = {**c["function"], "arguments": json.loads(c["function"]["arguments"])}
        expected = tokenizer.apply_chat_template(as_template, tools=[WEATHER_TOOL], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        assert answer.usage is not None and answer.usage.prompt_tokens == len(expected), (answer.usage, len(expected))
    httpx.delete(f"{node.base_url}/instances/{r.json()['instance_id']}", timeout=30)


def check_ollama_show(node) -> None:  # noqa: ANN001
    """Ollama's /api/show, /api/tags and /api/generate's load know a hub model by the card the cluster recorded;
    one it has no card for is a 404 (and not listed)."""
    import ollama

    olla = ollama.Client(host=node.base_url, timeout=30.0)
    shown = olla.show(TINY)
    assert shown.modelinfo and shown.modelinfo["llama.block_count"] == 4 and shown.details.format == "mlx", shown
    listed = [m.model for m in olla.list().models]
    assert TINY in listed and "smollm2-135m" in listed and TWIN not in listed, listed
    assert olla.generate(model=TINY, prompt="").done_reason == "load"
    with pytest.raises(ollama.ResponseError) as caught:
        olla.show(TWIN)  # on the mirror, but no card recorded yet
    assert caught.value.status_code == 404 and TWIN in caught.value.error


def check_two_stage_pipeline(node, client) -> None:  # noqa: ANN001
    """Two nodes with their own caches: stage 0 (layers 0-1) fetches only the files of its layers (not
    model-00002, layer 2's), loads that partial snapshot, and the answer is one node's."""
    r = httpx.post(f"{node.base_url}/instances", json={"model": TWIN, "min_nodes": 2, "strategy": "pipeline"}, timeout=30)
    assert r.status_code == 201 and len(r.json()["shards"]) == 2, r.text
    wait_for(lambda: (i := instance_of(node, TWIN)) and i["ready"], 240, "the pipeline is ready", node)
    ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
    one = client.chat.completions.create(model=TINY, **ask).choices[0].message.content
    two = client.chat.completions.create(model=TWIN, **ask).choices[0].message.content
    assert one == two and one, (one, two)
    stage0 = next(s for s in r.json()["shards"] if s["rank"] == 0)
    held = {n["node_id"]: {c["repo_id"]: c for c in n["cached"]}
            for n in httpx.get(f"{node.base_url}/models", timeout=10).json()["nodes"]}  # fmt: skip
    assert held[stage0["node_id"]][TWIN]["complete"] is False, held
    stage0_files = {p.name for p in Path(held[stage0["node_id"]][TWIN]["path"]).iterdir()}
    assert "model-00002-of-00003.safetensors" not in stage0_files, stage0_files


def check_models_cli(node) -> None:  # noqa: ANN001
    pulled = exo_models(node, "pull", BIG)
    assert pulled.returncode == 0, pulled.stderr
    listed = exo_models(node)
    assert listed.returncode == 0 and BIG in listed.stdout and TINY in listed.stdout, listed.stdout
    removed = exo_models(node, "rm", BIG)
    assert removed.returncode == 0, removed.stderr
    assert BIG not in exo_models(node).stdout
    assert exo_models(node, "rm", BIG).returncode == 1


_PIECES_CHILD = """
import sys, urllib.request
from pathlib import Path
from services.worker.models import ranged_fetch
url, part, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
ranged_fetch.fetch(urllib.request.build_opener(), url, part, {}, size, min_piece=2**20, chunk=2**17, max_pieces=4)
"""


def test_a_file_fetched_in_pieces_at_once_resumes_each_piece_after_kill_9(tmp_path: Path):
    from services.worker.models import ranged_fetch

    folder = tmp_path / "repo"
    folder.mkdir()
    data = os.urandom(8 * 2**20 + 12345)  # random bytes: a piece written at the wrong offset shows
    (folder / "w.safetensors").write_bytes(data)
    hub = HubMirror()
    hub.add("test-org/pieces", folder)
    hub.start()
    try:
        hub.throttle_bytes_per_s = 2**20  # per connection
        url = f"{hub.url}/test-org/pieces/resolve/main/w.safetensors"
        part = tmp_path / "blob.resume.incomplete"
        child = subprocess.Popen([sys.executable, "-c", _PIECES_CHILD, url, str(part), str(len(data))], cwd=REPO_ROOT)
        poll_until(lambda: part.exists() and ranged_fetch.held_bytes(part) >= 2 * 2**20, 30, "2 MiB in the part",
                   lambda: "")  # fmt: skip
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        pieces = ranged_fetch.read_pieces(part)
        assert pieces is not None and len(pieces) == 4, pieces
        unfinished = [done for _, done, stop in pieces if done < stop]
        assert unfinished and ranged_fetch.bytes_held(pieces) < len(data)
        assert any(start < done for start, done, _ in pieces), "no piece had begun"
        hub.throttle_bytes_per_s = None
        hub.ranges.clear()
        ranged_fetch.fetch(urllib.request.build_opener(), url, part, {}, len(data), min_piece=2**20, max_pieces=4)
        assert sorted(int(r.removeprefix("bytes=").split("-")[0]) for _, r in hub.ranges) == sorted(unfinished)
        assert part.read_bytes() == data
        assert ranged_fetch.read_pieces(part) is None  # the record goes once the file is whole
    finally:
        hub.stop()
