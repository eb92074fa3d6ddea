"""launch.encode --captions: cached T5 / CLIP caption embeddings beside the latents."""
import os
import shutil

import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
WORDS = sorted({w for combo in range(glyphs.NUM_COMBOS) for w in glyphs.caption(glyphs.combo_attrs(combo)).split()})


def _with_tokenizer(tmp_path, name):
    """The fixture encoder plus a word-level tokenizer.json over the glyph captions' words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), folder)
    if name == "t5":
        vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
        post = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    else:
        vocab = {"<unk>": 0, **{w: i + 3 for i, w in enumerate(WORDS)}, "<|startoftext|>": 62, "<|endoftext|>": 63}
        post = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                             special_tokens=[("<|startoftext|>", 62), ("<|endoftext|>", 63)])
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = post
    tok.save(str(folder / "tokenizer.json"))
    return str(folder)


def test_t5_caption_cache_feeds_a_precomputed_pixart_config(tmp_path):
    from configs import pixart_small
    from jaxmodels.convert.text_encoders import load_text_encoder
    from jaxmodels.data.captions import caption_encoder
    from jaxmodels.data.encode import encode_dataset, image_items
    from jaxmodels.data.images import flip_caption, image_dataset
    from jaxmodels.data.latents import LatentShards

    assert len(WORDS) < 60
    t5 = _with_tokenizer(tmp_path, "t5")
    encode, info = caption_encoder(t5, length=16, batch_size=4)
    assert info == {"kind": "t5", "length": 16, "dim": 32}
    folder = glyphs.write_folder(str(tmp_path / "images"), 6, image_size=16)
    items = image_items("folder", folder, 16)
    encode_dataset(items, str(tmp_path / "z"), batch_size=3, shard_size=6, flip="both", text_encoder=encode,
                   progress=False)
    shards = LatentShards(str(tmp_path / "z"))
    assert len(shards) == 12 and shards[0]["latents"].shape == (16, 16, 3)   # no VAE: pixels

    # Item 3 is image 1 flipped: its caption's left/right swapped, tokenized with </s>.
    caption = flip_caption(items[1]["caption"])
    ids = [WORDS.index(w) + 3 for w in caption.split()] + [1]
    model, params = load_text_encoder(t5)
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, :len(ids)] = ids
    mask = tokens != 0
    want = np.asarray(model.apply({"params": params}, tokens, mask))[0]
    np.testing.assert_array_equal(shards[3]["text_mask"], mask[0])
    np.testing.assert_allclose(shards[3]["text_emb"], want, rtol=1e-4, atol=1e-5)

    c = pixart_small.get_config()
    c.data.update(source="arrays", path=str(tmp_path / "z"), image_size=16, text=True, text_emb_shape=(16, 32),
                  val_size=2, num_threads=1, prefetch=1)
    batch = next(iter(image_dataset(c.data, "train", 4, seed=0)))
    assert batch["text_emb"].shape == (4, 16, 32) and batch["text_mask"].dtype == bool


def test_clip_caption_cache_is_sd_style(tmp_path):
    from jaxmodels.data.captions import caption_encoder

    clip = _with_tokenizer(tmp_path, "clip")
    encode, info = caption_encoder(clip, batch_size=2)
    assert info["kind"] == "clip" and info["length"] == 16   # the model's positions
    emb, mask = encode(["a red circle", "a blue square in the top left on a grey background"])
    assert emb.shape == (2, 16, 32) and mask.all()
    with pytest.raises(ConfigError, match="exceeds"):
        caption_encoder(clip, length=40)
    os.remove(os.path.join(clip, "tokenizer.json"))
    with pytest.raises(ConfigError, match="tokenizer.json"):
        caption_encoder(clip)
