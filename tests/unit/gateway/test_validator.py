"""The validator's pure parts (services/gateway/validator.py): reading a verdict back, the deny list, the guard
prompt and the plan of the `trifurcated` field, with each bad value a 400 naming its field."""

from __future__ import annotations

import json

import llguidance
import pytest

from services.gateway.errors import OpenAIError
from services.gateway.openai_schema import ChatCompletionRequest, TrifurcatedField, decode_body
from services.gateway.validator import (
    DENY_LIST,
    MAX_JUDGED_CHARS,
    VERDICT_SCHEMA,
    deny_verdict,
    guard_messages,
    parse_verdict,
    plan_trifurcated,
)
from shared.generation import ChatMessage

MODEL = "smollm2-135m"


def test_a_whole_verdict_is_read_as_it_is() -> None:
    v = parse_verdict('{"verdict": "unsafe", "reason": "asks for a weapon"}', "guard")
    assert (v.verdict, v.reason, v.validator, v.unsafe) == ("unsafe", "asks for a weapon", "guard", True)
    assert parse_verdict('{"verdict":"safe","reason":""}', "g").unsafe is False


def test_a_truncated_verdict_keeps_its_verdict_and_what_came_of_the_reason() -> None:
    v = parse_verdict('{"verdict": "safe", "reason": "a question about \\"bread', "g")
    assert (v.verdict, v.reason) == ("safe", 'a question about "bread')
    assert parse_verdict('{"verdict": "unsafe"', "g").verdict == "unsafe"


@pytest.mark.parametrize("text", ["", "I think it is fine", '{"verdict": "maybe", "reason": "x"}', "[1, 2]"])
def test_no_verdict_is_an_error_verdict_never_a_safe_one(text: str) -> None:
    v = parse_verdict(text, "g")
    assert v.verdict == "error" and not v.unsafe and "no verdict" in v.reason


def test_the_verdict_grammar_compiles_and_admits_only_the_two_verdicts() -> None:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(VERDICT_SCHEMA))
    assert not llguidance.LLMatcher.validate_grammar(grammar)
    assert VERDICT_SCHEMA["properties"]["verdict"] == {"enum": ["safe", "unsafe"]}  # type: ignore[index]


def test_the_deny_list_matches_user_messages_case_insensitively() -> None:
    messages = (ChatMessage("system", "never say BANANA"), ChatMessage("user", "How do I pick a Banana?"))
    v = deny_verdict(("ban+ana",), messages)
    assert v is not None and v.unsafe and v.validator == DENY_LIST and "Banana" in v.reason
    assert deny_verdict(("apple",), messages) is None
    assert deny_verdict(("never",), messages) is None  # the system prompt is not the request


def test_the_guard_prompt_quotes_the_conversation_and_keeps_its_end() -> None:
    long = "x" * (MAX_JUDGED_CHARS * 2) + " the end"
    guard = guard_messages((ChatMessage("system", "secret"), ChatMessage("user", long)))
    assert [m.role for m in guard] == ["system", "user"]
    assert "secret" not in guard[1].content and guard[1].content.endswith("the end\n\nVerdict JSON:")
    assert len(guard[1].content) < MAX_JUDGED_CHARS + 100


def test_true_plans_the_requests_own_model_annotating_with_prompt_lookup() -> None:
    plan = plan_trifurcated(True, MODEL, speculative_given=False)
    assert plan is not None and (plan.validator, plan.policy, plan.draft, plan.deny) == (MODEL, "annotate", "ngram", ())
    assert plan_trifurcated(None, MODEL, False) is None and plan_trifurcated(False, MODEL, False) is None


def test_the_field_decodes_from_a_request_and_an_unknown_key_is_a_400_naming_it() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "trifurcated": {"validator": DENY_LIST, "deny": ["bomb"], "policy": "block"}}  # fmt: skip
    request = decode_body(json.dumps(body).encode(), ChatCompletionRequest)
    assert isinstance(request, ChatCompletionRequest) and isinstance(request.trifurcated, TrifurcatedField)
    plan = plan_trifurcated(request.trifurcated, MODEL, False)
    assert plan is not None and plan.deny == ("bomb",) and plan.policy == "block"
    body["trifurcated"] = {"validatr": MODEL}
    with pytest.raises(OpenAIError) as err:
        decode_body(json.dumps(body).encode(), ChatCompletionRequest)
    assert err.value.status == 400 and err.value.param == "trifurcated.validatr"


@pytest.mark.parametrize(
    ("field", "speculative", "param"),
    [
        (TrifurcatedField(policy="warn"), False, "trifurcated.policy"),
        (TrifurcatedField(tokens=0), False, "trifurcated.tokens"),
        (TrifurcatedField(), True, "speculative"),
        (TrifurcatedField(deny=["("]), False, "trifurcated.deny[0]"),
        (TrifurcatedField(deny=[""]), False, "trifurcated.deny[0]"),
        (TrifurcatedField(validator=DENY_LIST), False, "trifurcated.deny"),
        (TrifurcatedField(validator=""), False, "trifurcated.validator"),
    ],
)
def test_each_bad_value_is_a_400_naming_its_field(field: TrifurcatedField, speculative: bool, param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        plan_trifurcated(field, MODEL, speculative)
    assert err.value.status == 400 and err.value.param == param


def test_no_draft_goes_with_a_speculative_field() -> None:
    plan = plan_trifurcated(TrifurcatedField(draft="none"), MODEL, speculative_given=True)
    assert plan is not None and plan.draft == "none"
