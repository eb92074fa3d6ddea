"""Chat templates (== transformers' apply_chat_template on committed templates) and
multi-turn masks (loss on assistant replies only)."""
import json
import os

import numpy as np
import pytest

from jaxmodels.data import chat, instruct
from jaxmodels.data.tokenizers import ByteTokenizer, build_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizers")
with open(os.path.join(FIXTURES, "reference.json"), encoding="utf-8") as _f:
    REF = json.load(_f)


@pytest.mark.parametrize("entry", REF["chat"], ids=lambda e: f"{e['folder']}-{e['conversation']}-{e['add_generation_prompt']}")
def test_render_and_ids_equal_transformers_apply_chat_template(entry):
    folder = os.path.join(FIXTURES, entry["folder"])
    template = chat.ChatTemplate.from_folder(folder, default=None)
    conv = REF["conversations"][entry["conversation"]]
    text = template.render(conv, add_generation_prompt=entry["add_generation_prompt"])
    assert text == entry["text"]
    tok = build_tokenizer({"tokenizer": "hf", "vocab_path": folder})
    specials = chat.special_token_ids(tok, template.special_strings())
    assert chat.encode_rendered(tok, text, specials) == entry["ids"]


def test_raise_exception_in_a_template_is_a_clear_error():
    template = chat.ChatTemplate.from_folder(os.path.join(FIXTURES, "chat"))
    with pytest.raises(chat.TemplateError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])


def test_folder_without_template_gets_the_default_or_an_error(tmp_path):
    assert chat.ChatTemplate.from_folder(str(tmp_path)).source == chat.DEFAULT_TEMPLATE
    with pytest.raises(Exception, match="no chat_template"):
        chat.ChatTemplate.from_folder(str(tmp_path), default=None)


SHAREGPT = {"conversations": [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello"},
    {"from": "human", "value": "Bye"},
    {"from": "gpt", "value": "Farewell"},
]}


def test_multi_turn_mask_covers_exactly_the_assistant_replies():
    class Tok(ByteTokenizer):  # bytes, with NUL as a one-token EOS
        eot = 0

        def token_id(self, s):
            return 0 if s == "\x00" else None

    template = chat.ChatTemplate(chat.DEFAULT_TEMPLATE, {"eos_token": "\x00"})
    tokens, mask = chat.encode_conversation(chat.sharegpt_messages(SHAREGPT), Tok(), template)
    text = bytes(tokens.tolist()).decode()
    assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello\x00\nUser: Bye\nAssistant: Farewell\x00\n"
    # Hand-checked: the masked characters are each reply (its leading space from the
    # "Assistant:" generation prompt), its EOS and the newline the template puts after it.
    masked = "".join(c for c, m in zip(text, mask) if m)
    assert masked == " Hello\x00\n Farewell\x00\n"
    assert mask.dtype == np.float32 and len(mask) == len(tokens)


def test_multi_turn_records_train_through_the_instruct_pipeline(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(SHAREGPT) for _ in range(10)) + "\n")
    cfg = instruct.instruct_data_config(path=str(path), seq_len=128, template="alpaca")
    rows = instruct.instruct_rows(cfg, "train", ByteTokenizer())
    assert rows["inputs"].shape == (9, 128)
    targets = rows["targets"][0][rows["mask"][0] > 0]
    assert bytes(targets.tolist()).decode() == " Hello\n Farewell\n"  # byte tokenizer: no EOS string
