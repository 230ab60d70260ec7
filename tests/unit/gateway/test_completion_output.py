"""The one SSE writer (services/gateway/completion_output.py) for chat and text completions, fed plain chunks
(a real node's streams are in tests/integration/test_openai_api.py)."""

from __future__ import annotations

import json

import msgspec

from services.gateway.completion_output import ChatShape, TextShape, sse_choices, sse_events, usage_of, whole_of_choices
from services.gateway.errors import OpenAIError
from shared.generation import FinishedRequest, TokenChunk, TokenLogprob, TopLogprob

FINISHED = FinishedRequest("length", None, 5, 0, 2, 0.1, 0.3, 5.0, "pipeline", 1)


class Chunks:
    """What the writer reads of a Generation: its chunks, once, then aclose."""

    def __init__(self, chunks: list[TokenChunk], error: OpenAIError | None = None) -> None:
        self.chunks, self.error, self.closed = chunks, error, False

    async def __aiter__(self):  # noqa: ANN204
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


CHUNKS = [
    TokenChunk("r", 0, "", 0, 5),  # a keep-alive
    TokenChunk("r", 1, "Hel", 1, 5),
    TokenChunk("r", 2, "lo", 2, 5, "length", finished=FINISHED),
]


async def events(shape, generation: Chunks, include_usage: bool) -> list:  # noqa: ANN001
    out = []
    async for raw in sse_events(generation, shape, include_usage):  # type: ignore[arg-type]
        text = raw.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        body = text.removeprefix("data: ").strip()
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


async def test_chat_opens_with_the_role_then_content_then_the_finish_then_usage():
    generation = Chunks(CHUNKS)
    out = await events(ChatShape("r", "m"), generation, include_usage=True)
    assert [e["choices"][0]["delta"] for e in out[:4]] == [{"role": "assistant", "content": ""}, {"content": "Hel"},
                                                            {"content": "lo"}, {}]  # fmt: skip
    assert out[3]["choices"][0]["finish_reason"] == "length"
    assert out[4]["choices"] == [] and out[4]["usage"]["total_tokens"] == 7
    assert out[5] == "[DONE]" and len(out) == 6
    assert generation.closed


async def test_text_gives_one_chunk_per_piece_and_the_same_tail():
    out = await events(TextShape("r", "m"), Chunks(CHUNKS), include_usage=False)
    assert [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in out[:2]] == [("Hel", None),
                                                                                          ("lo", "length")]  # fmt: skip
    assert out[2:] == ["[DONE]"]


async def test_a_failure_after_the_200_ends_with_an_error_event_and_no_done():
    for shape in (ChatShape("r", "m"), TextShape("r", "m")):
        generation = Chunks(CHUNKS[:2], OpenAIError(502, "generation failed: instance down", "server_error"))
        out = await events(shape, generation, include_usage=True)
        assert out[-1] == {"error": {"message": "generation failed: instance down", "type": "server_error",
                                     "param": None, "code": None}}  # fmt: skip
        assert "[DONE]" not in out and generation.closed


LP = [TokenLogprob("Hel", -0.5, list(b"Hel"), [TopLogprob("Hel", -0.5, list(b"Hel"))]), TokenLogprob("lo", -1.0, list(b"lo"))]


def chunks(rid: str, text: list[str], logprobs: bool = True) -> list[TokenChunk]:
    out = [TokenChunk(rid, i, t, i + 1, 5, logprobs=[LP[i]] if logprobs else []) for i, t in enumerate(text[:-1])]
    n = len(text) - 1
    return out + [TokenChunk(rid, n, text[-1], n + 1, 5, "length", finished=FINISHED, logprobs=[LP[n]] if logprobs else [])]


async def test_n_choices_stream_with_their_index_their_logprobs_and_one_summed_usage():
    out = []
    async for raw in sse_choices([Chunks(chunks("r", ["Hel", "lo"])), Chunks(chunks("r-1", ["Hel", "lo"]))],
                                 [ChatShape("r", "m", 0), ChatShape("r", "m", 1)], True, logprobs=True):  # fmt: skip
        body = raw.decode().removeprefix("data: ").strip()
        out.append(body if body == "[DONE]" else json.loads(body))
    deltas = [e for e in out if isinstance(e, dict) and e["choices"]]
    assert {e["choices"][0]["index"] for e in deltas} == {0, 1} and all(e["id"] == "r" for e in deltas)
    tokens = {i: [t["token"] for e in deltas if e["choices"][0]["index"] == i and e["choices"][0]["logprobs"]
                  for t in e["choices"][0]["logprobs"]["content"]] for i in (0, 1)}  # fmt: skip
    assert tokens == {0: ["Hel", "lo"], 1: ["Hel", "lo"]}
    assert out[-2]["usage"]["completion_tokens"] == 4 and out[-2]["usage"]["prompt_tokens"] == 5 and out[-1] == "[DONE]"


def test_whole_answers_carry_every_choice_and_the_legacy_logprobs_shape():
    last = chunks("r", ["Hel", "lo"])[-1]
    gathered = [("Hello", msgspec.structs.replace(last, logprobs=LP))] * 2
    body = whole_of_choices([ChatShape("r", "m", 0), ChatShape("r", "m", 1)], gathered, logprobs=True)  # type: ignore[arg-type]
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["usage"]["completion_tokens"] == 4
    assert body["choices"][1]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == "Hel"
    text = whole_of_choices([TextShape("r", "m")], gathered[:1], logprobs=True)["choices"][0]["logprobs"]  # type: ignore[arg-type]
    assert text == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -1.0], "top_logprobs": [{"Hel": -0.5}, {}],
                    "text_offset": [0, 3]}  # fmt: skip
    assert whole_of_choices([ChatShape("r", "m")], gathered[:1], logprobs=False)["choices"][0]["logprobs"] is None  # type: ignore[arg-type]

def test_usage_reports_the_drafted_and_accepted_tokens_of_speculation() -> None:
    finished = FinishedRequest("stop", None, 5, 0, 20, 0.1, 1.0, 30.0, "pipeline", 1, drafted_tokens=12, accepted_tokens=9)
    usage = usage_of(TokenChunk("r", 3, "", 20, 5, "stop", finished=finished))
    assert usage["speculative"] == {"drafted_tokens": 12, "accepted_tokens": 9}
    assert usage["completion_tokens_details"] == {"accepted_prediction_tokens": 9, "rejected_prediction_tokens": 3}
    plain = usage_of(TokenChunk("r", 3, "", 20, 5, "stop"))
    assert plain["speculative"] == {"drafted_tokens": 0, "accepted_tokens": 0} and plain["total_tokens"] == 25
