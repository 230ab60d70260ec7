"""The tool-call format of a card, read from the repo's chat template (services/gateway/hub_card.py; pure). The
templates are the published ones, abridged to the parts around tools (as json.loads gives them from
tokenizer_config.json: Jinja string literals keep their backslash escapes)."""

from __future__ import annotations

import pytest

from services.gateway.hub_card import card_from_config, chat_template_of, tool_call_format
from shared.models import MODEL_CARDS, HubRepo, ModelCard

QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more "
    "functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> "
    "XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n"
    "    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}{%- endif %}"
)
QWEN3_CODER = (
    "{%- if tools is iterable and tools | length > 0 %}\n{{- \"\\n\\n# Tools\\n\\nYou have access to the following "
    "functions:\\n\\n\" }}\n{{- \"<tools>\" }}{%- for tool in tools %}{{- \"\\n<function>\\n<name>\" ~ tool.name ~ "
    "\"</name>\" }}{%- endfor %}\n{%- endif %}\n{%- for tool_call in message.tool_calls %}\n"
    "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n{%- endfor %}"
)
LLAMA31 = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n"
    "{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n"
    "{{- \"Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\\n\\n\" }}\n{{- 'Respond in the format {\"name\": function name, "
    "\"parameters\": dictionary of argument name and its value}.' }}\n"
    "{%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n"
    "    {{- '<|python_tag|>' + tool_call.name + '.call(' }}\n{%- endif %}\n"
    "{%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "    {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}"
)
# Llama 3.2's template: no built-in tools (no <|python_tag|>), the tool answers under the ipython header
LLAMA32 = (
    "{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following "
    "functions. To call a function, please respond with JSON for a function call.\" }}\n{%- endif %}\n"
    "{%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "    {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}"
)
MISTRAL_V03 = (
    "{%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}\n"
    "{%- elif message.tool_calls is defined and message.tool_calls is not none %}\n        {{- \"[TOOL_CALLS] [\" }}\n"
    "{%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n"
    "        {{- '[TOOL_RESULTS] {\"content\": ' + content|string + \", \" }}"
)
DEEPSEEK_R1 = (
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜>"
    "<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' }}"
)
LFM2 = "{%- if tools %}{{- '<|tool_list_start|>' + tools | tojson + '<|tool_list_end|>' }}{%- endif %}"
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
)
GEMMA2 = "{% for message in messages %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim }}{% endfor %}"
UNKNOWN_TOOLS = "{%- if tools %}{{- '<functions>' + tools | tojson + '</functions>' }}{%- endif %}{{ messages }}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN25, "hermes"), (QWEN3_CODER, "qwen3_coder"), (LLAMA31, "llama3_json"), (LLAMA32, "llama3_json"),
        (MISTRAL_V03, "mistral"), (DEEPSEEK_R1, "deepseek_v3"), (LFM2, "pythonic"), (SMOLLM2, "none"),
        (GEMMA2, "none"), (UNKNOWN_TOOLS, "other"), ("", "none"),
    ],
)  # fmt: skip
def test_each_template_gives_its_format(template, expected):
    assert tool_call_format(template) == expected


def test_the_jinja_file_wins_and_named_templates_count_whole():
    assert chat_template_of({"chat_template": SMOLLM2}, QWEN25) == QWEN25
    named = {"chat_template": [{"name": "default", "template": SMOLLM2}, {"name": "tool_use", "template": QWEN25}]}
    assert tool_call_format(chat_template_of(named)) == "hermes"
    assert chat_template_of({}) == "" and chat_template_of({"chat_template": None}) == ""


def test_the_card_carries_the_format_of_its_template():
    config = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    files = {"model.safetensors": 100}
    card = card_from_config("org/m", HubRepo("org/m"), config, files, "qwen2".__eq__, chat_template=QWEN25)
    assert isinstance(card, ModelCard) and card.tool_call_format == "hermes"
    plain = card_from_config("org/m", HubRepo("org/m"), config, files, "qwen2".__eq__)
    assert isinstance(plain, ModelCard) and plain.tool_call_format == "none"


def test_built_in_cards_name_their_format():
    formats = {card.model_id: card.tool_call_format for card in MODEL_CARDS.values()}
    assert formats == {"smollm2-135m": "none", "llama-3.3-70b": "llama3_json", "deepseek-r1": "deepseek_v3",
                       "qwen-2.5-72b": "hermes", "mixtral-8x22b": "mistral", "llama-3.1-405b": "llama3_json"}  # fmt: skip
