"""The contract between the gateway and an instance's runners: one request, a stream of token chunks.

Token chunks travel on a per-request core-NATS subject; they never enter the event log.
"""

from __future__ import annotations

from typing import Literal

import msgspec

FinishReason = Literal["stop", "length", "cancelled", "error"]


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str
    # For a chat template with its own tool format (GenerateRequest.tools): an assistant's earlier calls, as JSON
    # in the templates' shape ([{"type": "function", "id", "function": {"name", "arguments": {...}}}]), and the
    # call a tool message answers.
    tool_calls: str | None = None
    tool_call_id: str | None = None


class SamplingParams(msgspec.Struct, frozen=True):
    max_tokens: int | None  # None: up to the end of the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: bool = False  # each token's log probability comes back in its chunk
    top_logprobs: int = 0  # with logprobs: this many most likely alternatives per token
    # Which output choice (OpenAI's `n`) this generation is: the shard of the seed schedule, so that the
    # choices of one seeded request differ from each other and each is reproducible.
    choice: int = 0


class Speculation(msgspec.Struct, frozen=True):
    """Speculative decoding for one request: the draft proposes up to `tokens` tokens, the model verifies them in
    one forward pass. `draft` is "ngram" (prompt lookup: the text so far proposes what followed its last n-gram)
    or a draft model: the gateway resolves it to a ready instance of its own (`draft_instance`), which the main
    runner asks for greedy tokens over NATS (subjects.runner_propose, ProposeDraft / DraftProposal)."""

    draft: str = "ngram"
    tokens: int = 4
    draft_instance: str | None = None  # a draft model's instance (set by the gateway); None with "ngram"


class ProposeDraft(msgspec.Struct, frozen=True):
    """Main runner -> draft instance: the request's context (prompt and completion so far) from `start` on (the
    draft instance keeps what it was sent before under `key`), and how many greedy tokens to propose. `k` = 0
    with `done`: the request ended, its draft cache is dropped (no reply is awaited)."""

    key: str  # the request id
    start: int  # the position of tokens[0] in the context
    tokens: list[int]
    k: int
    done: bool = False


class DraftProposal(msgspec.Struct, frozen=True):
    """The draft instance's answer: k greedy tokens; or none and `known` = how much of the context it holds under
    the key, when `start` was past that (it dropped the key, or restarted): the caller sends again from there."""

    tokens: list[int]
    known: int


class GenerateRequest(msgspec.Struct, frozen=True):
    request_id: str
    model_id: str
    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None  # chat: the runner applies the model's chat template
    prompt: str | None = None  # plain completion
    # A JSON schema (as JSON text) the output must match: every rank masks the logits with the same grammar, so
    # the sampled token stays the same. None: free text.
    json_schema: str | None = None
    speculative: Speculation | None = None  # None: plain decoding
    # The tools, as JSON (OpenAI's [{"type": "function", "function": {"name", "description", "parameters"}}]), for
    # the model's chat template to render in its own tool format; None: the prompt describes them itself, if at all.
    tools: str | None = None


class GenerateAccepted(msgspec.Struct, frozen=True, tag="accepted"):
    request_id: str
    prompt_tokens: int
    queue_position: int = 0
    seed: int | None = None  # the seed the request samples with (fixed at admission); None: greedy


class GenerateRejected(msgspec.Struct, frozen=True, tag="rejected"):
    request_id: str
    code: Literal["context_length_exceeded", "busy", "invalid_request", "not_ready"]
    message: str
    retry_after: float | None = None
    param: str | None = None  # the request field at fault, when one is


GenerateReply = GenerateAccepted | GenerateRejected

# A request larger than one bus message (NATS max_payload) is submitted as a GenerateUpload under this header:
# the runner that takes it asks `source` for each piece (the request's payload: the piece's index, as text) and
# joins them. Small on the bus whatever its size, it still goes to exactly one runner of the queue group.
UPLOAD_HEADER = "Exo-Upload"
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # the most a runner fetches for one request


class GenerateUpload(msgspec.Struct, frozen=True):
    request_id: str
    size: int  # bytes of the encoded GenerateRequest
    pieces: int
    source: str


class FinishedRequest(msgspec.Struct, frozen=True):
    """What a finished request was, as measured by the runner that served it (times from its admission)."""

    finish_reason: FinishReason
    seed: int | None  # None: greedy
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV cache was reused from an earlier request (prefix cache)
    completion_tokens: int
    time_to_first_token_s: float | None  # None: no token came
    total_s: float
    decode_tokens_per_s: float | None  # tokens after the first over the time after the first; None: under 2 tokens
    strategy: str  # the instance's: "pipeline" or "tensor"
    device_count: int
    drafted_tokens: int = 0  # speculative decoding: tokens the draft proposed
    accepted_tokens: int = 0  # ... and of those, the ones the model kept


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """One generated token's log probability (under the distribution it was drawn from, before any grammar mask)."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob] = []


class TokenChunk(msgspec.Struct, frozen=True):
    request_id: str
    index: int  # chunks are numbered so the gateway notices a gap
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None
    error: str | None = None
    cached_tokens: int = 0
    finished: FinishedRequest | None = None  # on the last chunk of every request, whatever its end
    stop_sequence: str | None = None  # the stop string that ended it, when one did (Anthropic reports it)
    logprobs: list[TokenLogprob] = []  # asked for: one per token this chunk counts (its text may lag behind)


class TokenCount(msgspec.Struct, frozen=True):
    """A runner's answer on runner_count: the prompt's tokens, as its admission would count them."""

    prompt_tokens: int


class CancelGeneration(msgspec.Struct, frozen=True):
    request_id: str
