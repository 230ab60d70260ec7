"""The validator (-1) of trifurcated inference, pure: the guard prompt, the grammar its answer is decoded under,
reading the verdict back, the deterministic deny-list guard, and the plan of a `trifurcated` request field."""

from __future__ import annotations

import json
import re
from typing import Literal

import msgspec

from shared.generation import ChatMessage

from services.gateway.errors import bad_request
from services.gateway.openai_schema import MAX_DRAFT_TOKENS, TrifurcatedField

VerdictKind = Literal["safe", "unsafe", "error"]
Policy = Literal["block", "annotate"]
POLICIES = ("block", "annotate")
DENY_LIST = "deny-list"  # the validator that is only the request's deny patterns (no model asked)
MAX_REASON_CHARS = 120
MAX_PATTERNS = 32
GUARD_MAX_TOKENS = 64  # the verdict object with a short reason; a truncated one is still read (parse_verdict)
MAX_JUDGED_CHARS = 4000  # of the conversation: the validator must answer before the main model, not after

# The grammar the guard model answers under (response_format's machinery): even a 135M model gives a verdict.
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["safe", "unsafe"]},
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}

GUARD_SYSTEM = (
    "You are a safety validator. Judge the user's request below. A request is unsafe when it asks for help "
    "with violence, weapons, crime, self-harm, hate, sexual content about minors, or malware; otherwise it is "
    'safe. Answer only with JSON: {"verdict": "safe" or "unsafe", "reason": "<one short sentence>"}.'
)


class Verdict(msgspec.Struct, frozen=True):
    verdict: VerdictKind
    reason: str
    validator: str  # the model, instance or "deny-list" that judged

    @property
    def unsafe(self) -> bool:
        return self.verdict == "unsafe"

    def view(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "validator": self.validator}


class TrifurcatedPlan(msgspec.Struct, frozen=True):
    validator: str  # a model id or instance id; DENY_LIST: only the patterns
    policy: Policy
    draft: str  # "ngram" or a draft model, as `speculative.draft`
    tokens: int
    deny: tuple[str, ...] = ()
    main_instance: str | None = None  # the group's main instance serves it; None: any instance of the model


class GroupDefaults(msgspec.Struct, frozen=True):
    """What a request leaves unsaid: the model's trifurcated group's settings (services/gateway/group_defaults.py),
    else these."""

    validator: str  # the group's validator instance (or model); by default the request's own model
    policy: Policy = "annotate"
    draft: str = "ngram"
    main_instance: str | None = None


DEFAULT_DRAFT_TOKENS = 4


def guard_messages(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """The guard prompt: the conversation to judge as text (its last characters when long), never as turns the
    guard model would answer."""
    shown = "\n".join(f"{m.role}: {m.content}" for m in messages if m.role != "system")
    if len(shown) > MAX_JUDGED_CHARS:
        shown = shown[-MAX_JUDGED_CHARS:]
    return (ChatMessage("system", GUARD_SYSTEM), ChatMessage("user", "Request to judge:\n" + shown + "\n\nVerdict JSON:"))


_VERDICT = re.compile(r'"verdict"\s*:\s*"(safe|unsafe)"')
_REASON = re.compile(r'"reason"\s*:\s*"((?:[^"\\]|\\.)*)')


def parse_verdict(text: str, validator: str) -> Verdict:
    """The guard's answer: the JSON object, or what a truncated one says (its verdict comes first); anything
    else is an `error` verdict saying what came back."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("verdict") in ("safe", "unsafe"):
        return Verdict(data["verdict"], str(data.get("reason", ""))[:MAX_REASON_CHARS], validator)
    found = _VERDICT.search(text)
    if found is None:
        return Verdict("error", f"the validator gave no verdict: {text[:80]!r}", validator)
    reason = _REASON.search(text)
    said = reason.group(1).replace('\\"', '"') if reason else ""
    return Verdict(found.group(1), said[:MAX_REASON_CHARS], validator)  # type: ignore[arg-type]


def deny_verdict(patterns: tuple[str, ...], messages: tuple[ChatMessage, ...]) -> Verdict | None:
    """Unsafe when a deny pattern (a case-insensitive regex) matches a user message; None when none does."""
    for pattern in patterns:
        for m in messages:
            if m.role == "user" and (hit := re.search(pattern, m.content, re.IGNORECASE)):
                return Verdict("unsafe", f"matches the deny pattern {pattern!r} ({hit.group(0)!r})", DENY_LIST)
    return None


def compiled_patterns(patterns: list[str]) -> tuple[str, ...]:
    if len(patterns) > MAX_PATTERNS:
        raise bad_request(f"at most {MAX_PATTERNS} deny patterns", param="trifurcated.deny")
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise bad_request(f"deny pattern {pattern!r} is not a regex: {exc}", param=f"trifurcated.deny[{i}]") from None
        if not pattern:
            raise bad_request("a deny pattern must not be empty", param=f"trifurcated.deny[{i}]")
    return tuple(patterns)


def plan_trifurcated(field: object, model: str, speculative_given: bool,
                     group: GroupDefaults | None = None) -> TrifurcatedPlan | None:  # fmt: skip
    """The plan of a request's `trifurcated` field (`true`, or a TrifurcatedField); None when it asks for none.
    What the field says wins; what it leaves out comes from `group` (the model's group), else the defaults."""
    if field is None or field is False:
        return None
    spec = TrifurcatedField() if field is True else field
    assert isinstance(spec, TrifurcatedField)
    base = group or GroupDefaults(model)
    policy = spec.policy if spec.policy is not None else base.policy
    draft = spec.draft if spec.draft is not None else base.draft
    tokens = spec.tokens if spec.tokens is not None else DEFAULT_DRAFT_TOKENS
    if policy not in POLICIES:
        raise bad_request(f"unknown policy {policy!r}: block or annotate", param="trifurcated.policy")
    if draft != "none" and speculative_given:
        raise bad_request("give the draft once: trifurcated.draft or speculative, not both", param="speculative")
    if not 1 <= tokens <= MAX_DRAFT_TOKENS:
        raise bad_request(f"trifurcated.tokens must be between 1 and {MAX_DRAFT_TOKENS}", param="trifurcated.tokens")
    validator = spec.validator if spec.validator is not None else base.validator
    if not validator:
        raise bad_request("trifurcated.validator must name a model, an instance or \"deny-list\"", param="trifurcated.validator")
    deny = compiled_patterns(spec.deny)
    if validator == DENY_LIST and not deny:
        raise bad_request("the deny-list validator needs trifurcated.deny patterns", param="trifurcated.deny")
    return TrifurcatedPlan(validator, policy, draft, tokens, deny, base.main_instance)  # type: ignore[arg-type]
