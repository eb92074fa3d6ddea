"""A tiny next-token task for trainer tests: a scanned residual MLP on a deterministic
sequence rule, with padded targets (so aux["weight"] differs between examples, which is
what makes accumulation weighting observable). Selected by
task.name = "tests.train.toy_task:ToyTask"; dims come from the config's `model` section.
"""
from __future__ import annotations

import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.layers.stack import scan_blocks
from jaxmodels.tasks.base import Task


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x_BTD):
        h_BTD = nn.LayerNorm(name="norm")(x_BTD)
        h_BTD = nn.Dense(2 * self.width, name="up")(h_BTD)
        return x_BTD + nn.Dense(self.width, name="down")(nn.gelu(h_BTD)), None


class ToyModel(nn.Module):
    vocab: int
    width: int
    layers: int
    remat: str = "none"

    @nn.compact
    def __call__(self, tokens_BT):
        x_BTD = nn.Embed(self.vocab, self.width, name="embed")(tokens_BT)
        x_BTD = x_BTD + self.param("pos", nn.initializers.normal(0.02), (tokens_BT.shape[1], self.width))
        x_BTD, _ = scan_blocks(Block, self.layers, self.remat, name="blocks", width=self.width)(x_BTD)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="norm_f")(x_BTD)).astype(jnp.float32)


class ToySource:
    """Example i: a sequence following t[n+1] = (3 t[n] + i) % V and a target mask of
    deterministic length, so examples differ in their number of target tokens."""

    def __init__(self, vocab: int, seq_len: int, size: int, offset: int = 0):
        self.vocab, self.seq_len, self.size, self.offset = vocab, seq_len, size, offset

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        i = int(i) + self.offset
        rng = np.random.default_rng(i)
        tokens = np.zeros(self.seq_len + 1, np.int32)
        tokens[0] = rng.integers(self.vocab)
        for n in range(self.seq_len):
            tokens[n + 1] = (3 * tokens[n] + i % 5) % self.vocab
        mask = (np.arange(self.seq_len) < 2 + rng.integers(self.seq_len - 1)).astype(np.float32)
        return {"tokens": tokens, "mask": mask}


class ToyTask(Task):
    unit = "tokens"

    def __init__(self, cfg):
        self.cfg = cfg
        m = cfg.model
        self.seq_len = int(m.seq_len)
        self.model = ToyModel(vocab=int(m.vocab), width=int(m.width), layers=int(m.layers),
                              remat=str(m.get("remat", "none")))

    def init_params(self, rng):
        return self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))["params"]

    def loss(self, params, batch, rng, train=True):
        tokens = batch["tokens"]
        logits_BTV = self.model.apply({"params": params}, tokens[:, :-1])
        logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32))
        nll_BT = -jnp.take_along_axis(logp_BTV, tokens[:, 1:, None], axis=-1)[..., 0]
        mask_BT = batch["mask"]
        weight = jnp.sum(mask_BT)
        loss = jnp.sum(nll_BT * mask_BT) / weight * batch["scale"][0]
        acc = jnp.sum((jnp.argmax(logits_BTV, -1) == tokens[:, 1:]) * mask_BT) / weight
        return loss, {"weight": weight, "accuracy": acc}

    def dataset(self, split, batch_size, seed):
        t = self.cfg.task
        src = ToySource(int(self.cfg.model.vocab), self.seq_len, 256, offset=0 if split == "train" else 10_000)
        ds = grain.MapDataset.source(src).shuffle(seed=seed)
        if split == "train":
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=True)
        nan_after, delay = int(t.get("nan_after", -1)), float(t.get("delay", 0.0))

        def poison(i, batch):  # NaN scale from batch nan_after on: a diverging run, on demand
            bad = 0 <= nan_after <= i
            return {**batch, "scale": np.full((batch_size,), np.nan if bad else 1.0, np.float32)}

        def slow(batch):  # after to_iter_dataset: runs in the consumer thread, one batch at a time
            time.sleep(delay)
            return batch

        it = ds.map_with_index(poison).to_iter_dataset()
        return it.map(slow) if delay else it

    def abstract_batch(self, batch_size):
        return {"tokens": jax.ShapeDtypeStruct((batch_size, self.seq_len + 1), jnp.int32),
                "mask": jax.ShapeDtypeStruct((batch_size, self.seq_len), jnp.float32),
                "scale": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}

    def units_per_example(self, batch=None):
        return float(self.seq_len)

    def flops_per_example(self):
        m = self.cfg.model
        per_token = 2 * (m.layers * 4 * m.width * m.width + m.width * m.vocab)
        return 3.0 * per_token * self.seq_len

    def trainable_mask(self, params):
        frozen = tuple(self.cfg.task.get("frozen", ()))
        if not frozen:
            return None
        return {name: jax.tree.map(lambda _: name not in frozen, sub) for name, sub in params.items()}

    def evaluate(self, params, step, workdir):
        return {"embed_norm": float(jnp.linalg.norm(params["embed"]["embedding"]))}
