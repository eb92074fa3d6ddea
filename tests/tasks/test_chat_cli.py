"""launch.chat: a REPL over piped input, with the model folder's chat template, history and EOS."""
import io
import json
import os
import shutil

import numpy as np

from launch import chat as chat_cli

LLAMA = os.path.join(os.path.dirname(__file__), "..", "fixtures", "llama", "llama")
# Word-level fixture vocab (w0 .. w126): user turns are "w1 <text> w2", replies "<text> w5",
# the generation prompt "w3"; w5 is the EOS.
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}w1 {{ m['content'] }} w2 "
            "{% else %}{{ m['content'] }} {{ eos_token }} {% endif %}{% endfor %}"
            "{% if add_generation_prompt %}w3{% endif %}")


def model_folder(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(LLAMA, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "eos_token": "w5"}))
    return str(folder)


def test_piped_conversation_keeps_history_and_stops_at_eos(tmp_path):
    folder = model_folder(tmp_path)
    out = io.StringIO()
    assert chat_cli.main(["--hf", folder, "--greedy", "--max_new_tokens", "6"],
                         stdin=io.StringIO("w10 w11\nw12\n/exit\nw99\n"), stdout=out) == 0
    replies = out.getvalue().splitlines()
    assert len(replies) == 2  # two turns, then /exit

    from launch.generate import load_model
    from jaxmodels.generate import greedy
    model, params, tok = load_model(hf=folder)
    session = chat_cli.Chat(model, params, tok, folder)
    assert session.eos_ids == (5,)
    # Turn 2's prompt is the template over the whole history (turn 1's reply included).
    session.history = [{"role": "user", "content": "w10 w11"}, {"role": "assistant", "content": replies[0]},
                       {"role": "user", "content": "w12"}]
    ids = session.prompt_ids(session.history)
    expected_text = f"w1 w10 w11 w2 {replies[0]} w5 w1 w12 w2 w3"
    assert ids == tok.encode(expected_text)
    # The reply is greedy decoding of that prompt, cut at the first w5.
    new = np.asarray(greedy(model, params, np.asarray([ids]), 6))[0, len(ids):].tolist()
    cut = new[:new.index(5)] if 5 in new else new
    assert replies[1] == tok.decode(cut).strip()
