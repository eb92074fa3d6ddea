"""Chat with a model: a REPL that keeps the conversation's history (reads stdin, so it also
runs on piped input).

    python -m launch.chat --hf path/to/TinyLlama-1.1B-Chat     # an HF / launch.convert / merged-LoRA folder
    python -m launch.chat --workdir runs/llama_lora_tiny        # a training run (newest checkpoint)
    printf 'Hello\\nAnd then?\\n' | python -m launch.chat --hf path/to/model --greedy

Each line is a user turn; `/reset` forgets the history, `/exit` (or end of input) quits.
The prompt is the model folder's chat template (tokenizer_config.json, rendered as
transformers does) with add_generation_prompt; models without one (our own runs) use a plain
"User: / Assistant:" transcript with BOS first when the tokenizer has one, as the instruct
data pipeline trains them. Replies end at the first EOS (the tokenizer's, the template's
eos_token, and generation_config.json's eos_token_id).
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import json
import os
import sys


class Chat:
    """History + template + decoding for one conversation."""

    def __init__(self, model, params, tokenizer, folder: str = "", system: str = "", max_context: int = 0):
        from jaxmodels.data import chat

        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.template = chat.template_for(tokenizer, folder)
        self.default = self.template.source == chat.DEFAULT_TEMPLATE
        self.specials = chat.special_token_ids(tokenizer, self.template.special_strings())
        self.system, self.max_context = system, max_context
        self.eos_ids = eos_ids(tokenizer, self.template, folder)
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self, messages) -> list[int]:
        from jaxmodels.data import chat

        text = self.template.render(messages, add_generation_prompt=True)
        ids = chat.encode_rendered(self.tokenizer, text, self.specials)
        bos = getattr(self.tokenizer, "bos", None)
        if self.default and bos is not None:
            ids = [bos] + ids  # as data/instruct.py trains our runs
        return ids

    def reply(self, user: str, max_new_tokens: int, **sampling) -> str:
        import jax
        import numpy as np

        from jaxmodels.generate import cut_at_eos, greedy, sample

        self.history.append({"role": "user", "content": user})
        ids = self.prompt_ids(self.history)
        # Drop the oldest exchanges (never the system turn) until prompt + reply fit.
        while self.max_context and len(ids) + max_new_tokens > self.max_context and len(self.history) > 1 + bool(self.system):
            del self.history[bool(self.system):bool(self.system) + 2]
            ids = self.prompt_ids(self.history)
        prompt = np.asarray(ids, np.int32)[None]
        seed = sampling.pop("seed", 0)
        if sampling.pop("greedy", False):
            out = greedy(self.model, self.params, prompt, max_new_tokens, eos_ids=self.eos_ids,
                         repetition_penalty=sampling.get("repetition_penalty", 1.0))
        else:
            out = sample(self.model, self.params, prompt, max_new_tokens, jax.random.key(seed),
                         eos_ids=self.eos_ids, **sampling)
        new = cut_at_eos(np.asarray(out)[0, len(ids):], self.eos_ids)
        text = self.tokenizer.decode(new).strip()
        self.history.append({"role": "assistant", "content": text})
        return text


def eos_ids(tokenizer, template, folder: str) -> tuple:
    """Every id that ends a reply: tokenizer EOS, template eos_token, generation_config's."""
    ids = [getattr(tokenizer, "eot", None)]
    eos_text = template.special_tokens.get("eos_token")
    if eos_text and hasattr(tokenizer, "token_id"):
        ids.append(tokenizer.token_id(eos_text))
    gen = os.path.join(folder, "generation_config.json") if folder else ""
    if gen and os.path.isfile(gen):
        with open(gen) as f:
            e = json.load(f).get("eos_token_id")
        ids += e if isinstance(e, list) else [e]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def main(argv=None, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a training run's workdir")
    where.add_argument("--hf", help="a Hugging Face / launch.convert / merged LoRA folder")
    p.add_argument("--tokenizer", default="", help="with --hf: the folder holding the tokenizer (default: --hf)")
    p.add_argument("--system", default="", help="a system message to start the conversation")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--max_context", type=int, default=0, help="tokens of history + reply kept (0: all)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_ema", action="store_true")
    a = p.parse_args(argv)

    from launch.generate import load_model

    model, params, tokenizer = load_model(a.workdir or "", a.hf or "", a.tokenizer, a.no_ema)
    folder = a.tokenizer or a.hf or getattr(tokenizer, "folder", "")
    session = Chat(model, params, tokenizer, folder, a.system, a.max_context)
    interactive = stdin.isatty()
    turn = 0
    while True:
        if interactive:
            stdout.write(">>> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            session.reset()
            continue
        reply = session.reply(line, a.max_new_tokens, greedy=a.greedy, seed=a.seed + turn,
                              **({} if a.greedy else dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)),
                              repetition_penalty=a.repetition_penalty)
        stdout.write(reply + "\n")
        stdout.flush()
        turn += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
