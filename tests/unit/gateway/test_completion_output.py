"""The one SSE writer (services/gateway/completion_output.py) for chat and text completions, fed plain chunks
(a real node's streams are in tests/integration/test_openai_api.py)."""

from __future__ import annotations

import json

from services.gateway.completion_output import ChatShape, TextShape, sse_events, usage_of
from services.gateway.errors import OpenAIError
from shared.generation import FinishedRequest, TokenChunk

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


def test_usage_reports_the_drafted_and_accepted_tokens_of_speculation() -> None:
    finished = FinishedRequest("stop", None, 5, 0, 20, 0.1, 1.0, 30.0, "pipeline", 1, drafted_tokens=12, accepted_tokens=9)
    usage = usage_of(TokenChunk("r", 3, "", 20, 5, "stop", finished=finished))
    assert usage["speculative"] == {"drafted_tokens": 12, "accepted_tokens": 9}
    assert usage["completion_tokens_details"] == {"accepted_prediction_tokens": 9, "rejected_prediction_tokens": 3}
    plain = usage_of(TokenChunk("r", 3, "", 20, 5, "stop"))
    assert plain["speculative"] == {"drafted_tokens": 0, "accepted_tokens": 0} and plain["total_tokens"] == 25
