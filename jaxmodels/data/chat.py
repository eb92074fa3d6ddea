"""Chat templates and multi-turn conversations.

A model folder's `tokenizer_config.json` holds its `chat_template` (a Jinja2 template; newer
folders keep it in `chat_template.jinja`). We render it the way transformers'
`apply_chat_template` does: a sandboxed Jinja environment with trim_blocks, lstrip_blocks
and loop controls, a `tojson` filter, the globals `raise_exception` and `strftime_now`, and
the variables `messages`, `add_generation_prompt` and the special-token strings (bos_token,
eos_token, unk_token, pad_token). Models without a template (our own runs) get DEFAULT_TEMPLATE.

Special-token strings in the rendered text (e.g. "<s>", "<|im_end|>") are encoded as their
single ids by `encode_rendered`, whatever the tokenizer library.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any, Optional, Sequence

import numpy as np

from jaxmodels.config import ConfigError

# For models trained without a template (plain text / our instruct data): a readable transcript.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class TemplateError(ConfigError):
    """raise_exception(...) called by a chat template (e.g. roles that do not alternate)."""


def _token_str(v: Any) -> str:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(v, dict):
        return str(v.get("content", ""))
    return "" if v is None else str(v)


def _environment():
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install jinja2 (a jaxmodels dependency)") from None

    def raise_exception(message):
        raise TemplateError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token strings it is rendered with."""

    def __init__(self, template: str, special_tokens: Optional[dict] = None):
        self.source = template
        self.special_tokens = {k: _token_str(v) for k, v in (special_tokens or {}).items() if _token_str(v)}
        self.compiled = _environment().from_string(template)

    @classmethod
    def from_folder(cls, folder: str, default: Optional[str] = DEFAULT_TEMPLATE) -> "ChatTemplate":
        """The folder's template (tokenizer_config.json / chat_template.jinja), else `default`."""
        config, template = {}, None
        path = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            template = config.get("chat_template")
        jinja = os.path.join(folder, "chat_template.jinja")
        if template is None and os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default", next(iter(named.values()), None))
        if template is None:
            if default is None:
                raise ConfigError(f"{folder} has no chat_template (tokenizer_config.json / chat_template.jinja)")
            template = default
        return cls(template, {k: config.get(k) for k in SPECIAL_KEYS})

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False, **kwargs) -> str:
        return self.compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                    **self.special_tokens, **kwargs)

    def special_strings(self) -> list[str]:
        """Strings that stand for one special token each: the template's named ones."""
        return [v for v in self.special_tokens.values() if v]


def token_text(tokenizer, token: Optional[int]) -> str:
    """The string of one (special) token id, or "" when the tokenizer cannot spell it."""
    if token is None:
        return ""
    if hasattr(tokenizer, "tok"):
        return tokenizer.tok.id_to_token(int(token)) or ""
    if hasattr(tokenizer, "sp"):
        return tokenizer.sp.id_to_piece(int(token))
    return ""


def template_for(tokenizer, folder: str = "") -> ChatTemplate:
    """The chat template of a model folder, else DEFAULT_TEMPLATE with the tokenizer's EOS."""
    if folder and os.path.isdir(folder):
        found = ChatTemplate.from_folder(folder, default=None) if _has_template(folder) else None
        if found is not None:
            return found
    return ChatTemplate(DEFAULT_TEMPLATE, {"eos_token": token_text(tokenizer, getattr(tokenizer, "eot", None))})


def _has_template(folder: str) -> bool:
    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("chat_template") is not None:
                return True
    return os.path.isfile(os.path.join(folder, "chat_template.jinja"))


def special_token_ids(tokenizer, strings: Sequence[str]) -> dict[str, int]:
    """{string: id} for the special strings the tokenizer knows as single tokens."""
    out = {}
    for s in strings:
        i = tokenizer.token_id(s) if hasattr(tokenizer, "token_id") else None
        if i is not None:
            out[s] = i
    return out


def encode_rendered(tokenizer, text: str, specials: dict[str, int]) -> list[int]:
    """Tokens of rendered chat text: each special string becomes its one id, the text between
    is encoded by the tokenizer (no special tokens added)."""
    if not specials:
        return tokenizer.encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for part in re.split(pattern, text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(tokenizer.encode(part))
    return ids


def sharegpt_messages(record: dict) -> list[dict]:
    """[{role, content}] from a ShareGPT record ({"conversations": [{"from", "value"}]}) or an
    OpenAI-style one ({"messages": [{"role", "content"}]})."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    out = []
    for turn in record["conversations"]:
        who = turn.get("from", turn.get("role"))
        if who not in SHAREGPT_ROLES:
            raise ConfigError(f"unknown ShareGPT speaker {who!r}; known: {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": SHAREGPT_ROLES[who], "content": turn.get("value", turn.get("content", ""))})
    return out


def encode_conversation(messages: Sequence[dict], tokenizer, template: ChatTemplate,
                        bos: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of a whole conversation; mask is 1 on each assistant reply (its text and
    end-of-turn marker), 0 on everything else (system, user turns, the assistant header that
    add_generation_prompt writes: the part the model is given at chat time).

    Turn i's text is the rendering of messages[:i+1] minus that of messages[:i] (the
    template's output for a prefix is a prefix of the whole: true of the usual templates,
    checked here). `bos` is prepended when the template does not write one itself.
    """
    specials = special_token_ids(tokenizer, template.special_strings())
    tokens: list[int] = []
    mask: list[float] = []
    previous = ""
    for i, message in enumerate(messages):
        text = template.render(messages[:i + 1])
        if not text.startswith(previous):
            raise ConfigError("the chat template's rendering of a conversation prefix is not a prefix of "
                              "the whole; cannot mask per turn with this template")
        head = previous
        if message["role"] == "assistant":
            prompted = template.render(messages[:i], add_generation_prompt=True)
            if text.startswith(prompted):
                head = prompted
        for part, weight in ((text[len(previous):len(head)], 0.0), (text[len(head):], 1.0 if message["role"] == "assistant" else 0.0)):
            new = encode_rendered(tokenizer, part, specials) if part else []
            tokens += new
            mask += [weight] * len(new)
        previous = text
    if bos is not None and (not tokens or tokens[0] != bos):
        tokens, mask = [bos] + tokens, [0.0] + mask
    return np.asarray(tokens, np.int32), np.asarray(mask, np.float32)
