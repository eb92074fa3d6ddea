"""Image data: the embedded glyph set (determinism, captions true to pixels, held-out split,
flips), the grain pipeline's exact resume, and the folder / tfds / arrays sources."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs
from jaxmodels.data import images as D

_RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 235),
        "yellow": (240, 215, 30), "purple": (150, 60, 200), "orange": (250, 140, 20)}


def test_glyphs_are_deterministic_and_distinct():
    a, attrs_a = glyphs.example(0, 7)
    b, attrs_b = glyphs.example(0, 7)
    np.testing.assert_array_equal(a, b)
    assert attrs_a == attrs_b
    c, _ = glyphs.example(0, 8)
    d, _ = glyphs.example(1, 7)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert glyphs.example(0, 3, image_size=64)[0].shape == (64, 64, 3)


def test_combo_index_roundtrip_and_held_out_split():
    assert glyphs.NUM_COMBOS == 8 * 6 * 2 * 5 * 3
    for i in (0, 1, 77, glyphs.NUM_COMBOS - 1):
        assert glyphs.combo_index(glyphs.combo_attrs(i)) == i
    held = set(glyphs.held_out_combos().tolist())
    assert 0.08 < len(held) / glyphs.NUM_COMBOS < 0.12
    # every value of every attribute still occurs in training
    train = np.array([glyphs.combo_attrs(i) for i in glyphs.train_combos()])
    assert [len(set(train[:, k])) for k in range(5)] == [8, 6, 2, 5, 3]
    for i in range(200):
        assert glyphs.combo_index(glyphs.example(0, i, "train")[1]) not in held
        assert glyphs.combo_index(glyphs.example(0, i, "holdout")[1]) in held


def test_pixels_match_the_caption():
    """Background shade, colour, size and position read back from the pixels."""
    sizes = {0: [], 1: []}
    for i in range(60):
        image, attrs = glyphs.example(3, i)
        shape, colour, size, position, background = attrs
        text = glyphs.caption(attrs)
        for names, value in zip(glyphs.ATTRIBUTES.values(), attrs):
            assert names[value] in text
        img = image.astype(np.float32)
        bg = img[0, 0]
        assert abs(bg.mean() - {"black": 20, "grey": 125, "white": 235}[glyphs.BACKGROUNDS[background]]) < 14
        dist = np.abs(img - bg).sum(-1)
        fg = dist > 60  # shape pixels
        colour_mean = img[dist > 0.85 * dist.max()].mean(0)  # interior: no anti-aliased edge
        nearest = min(_RGB, key=lambda k: np.sum((np.array(_RGB[k]) - colour_mean) ** 2))
        assert nearest == glyphs.COLOURS[colour], (text, colour_mean)
        ys, xs = np.nonzero(fg)
        name = glyphs.POSITIONS[position]
        cx, cy = xs.mean(), ys.mean()
        assert (cx < 14) == ("left" in name) and (cx > 18) == ("right" in name), (text, cx)
        assert (cy < 14.5) == ("top" in name) and (cy > 17.5) == ("bottom" in name), (text, cy)
        sizes[size].append(fg.sum() / {"circle": 1.0, "ring": 0.7}.get(glyphs.SHAPES[shape], 1.0))
    assert max(sizes[0]) < min(sizes[1])  # every small glyph covers fewer pixels than any large


def test_flip_mirrors_image_caption_and_attributes():
    source = D.GlyphSource(100, seed=0)
    for i in range(40):
        item = source[i]
        if glyphs.POSITIONS[item["attrs"][3]] in ("top left", "bottom right"):
            break
    flipped = D._random_flip(item, _AlwaysFlip())
    np.testing.assert_array_equal(flipped["image"], item["image"][:, ::-1])
    assert flipped["caption"] == glyphs.caption(tuple(flipped["attrs"]))
    assert ("left" in item["caption"]) == ("right" in flipped["caption"])
    attrs = list(item["attrs"])
    assert glyphs.mirror_position(glyphs.mirror_position(attrs[3])) == attrs[3]


class _AlwaysFlip:
    def random(self):
        return 0.0


def test_captions_encode_as_the_text_encoder_expects():
    from jaxmodels.layers.text_encoder import PAD_ID, encode_bytes

    text = "a small red triangle in the top left on a grey background"
    tokens, mask = D.encode_caption(text, 72)
    ref_tokens, ref_mask = encode_bytes([text], 72)
    np.testing.assert_array_equal(tokens, ref_tokens[0])
    np.testing.assert_array_equal(mask, ref_mask[0])
    assert D.CAPTION_PAD == PAD_ID and mask.sum() == len(text)
    assert D.decode_caption(tokens) == text
    assert D.flip_caption(text) == text.replace("left", "right")


def test_embedded_pipeline_batches_and_exact_resume():
    cfg = D.image_data_config(text=True, caption_len=72, num_threads=1)
    ds = D.image_dataset(cfg, "train", 4, seed=3)
    it = iter(ds)
    first = next(it)
    assert first["image"].shape == (4, 32, 32, 3) and first["image"].dtype == np.float32
    assert -1.0 <= first["image"].min() and first["image"].max() <= 1.0
    assert first["label"].dtype == np.int32 and first["text_tokens"].shape == (4, 72)
    assert first["text_mask"].dtype == bool
    for k in range(4):  # the caption names the label's shape
        assert glyphs.SHAPES[first["label"][k]] in D.decode_caption(first["text_tokens"][k])
    next(it)
    state = it.get_state()
    expected = [next(it), next(it)]
    it2 = iter(D.image_dataset(cfg, "train", 4, seed=3))
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    shapes = D.example_shapes(cfg)
    assert set(shapes) == set(first) and shapes["text_tokens"][0] == (72,)
    val = list(D.image_dataset(D.image_data_config(val_size=10, num_threads=1), "val", 4, seed=0))
    assert len(val) == 2  # 10 held-out examples, drop_remainder
    with pytest.raises(ConfigError, match="valid: embedded, folder, tfds, arrays"):
        D.image_source(D.image_data_config(source="nope"), "train")


def _write_folder(root):
    rng = np.random.default_rng(0)
    for cls, size in (("cats", (40, 50)), ("dogs", (48, 36))):
        os.makedirs(os.path.join(root, cls))
        for i in range(12):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, cls, f"img{i}.png"))
    with open(os.path.join(root, "dogs", "img3.txt"), "w") as f:
        f.write("a dog on the left\n")


def test_folder_source_resizes_crops_and_reads_captions(tmp_path):
    root = str(tmp_path / "imgs")
    _write_folder(root)
    src = D.FolderSource(root, image_size=16, channels=3)
    assert src.classes == ["cats", "dogs"] and len(src) == 24
    item = src[[p for p, _ in src.items].index(os.path.join(root, "dogs", "img3.png"))]
    assert item["image"].shape == (16, 16, 3) and item["label"] == 1
    assert item["caption"] == "a dog on the left"
    assert src[0]["caption"] == "cats"
    # center crop of a 40x50 (w x h) image resized to 16 wide: rows 2..17 of the 16x20 resize
    with Image.open(os.path.join(root, "cats", "img0.png")) as img:
        want = np.asarray(img.convert("RGB").resize((16, 20), Image.BICUBIC))[2:18]
    np.testing.assert_array_equal(src[0]["image"], want)
    gray = D.FolderSource(root, image_size=8, channels=1)[0]["image"]
    assert gray.shape == (8, 8, 1)
    cfg = D.image_data_config(source="folder", path=root, image_size=16, text=True, caption_len=24,
                              val_size=4, flip=True, num_threads=1)
    train = D.image_source(cfg, "train")
    val = D.image_source(cfg, "val")
    assert len(train) + len(val) == 24 and len(val) == 2  # at most a tenth held out
    batch = next(iter(D.image_dataset(cfg, "train", 6, seed=0)))
    assert batch["image"].shape == (6, 16, 16, 3) and batch["text_tokens"].shape == (6, 24)
    assert set(np.unique(batch["label"])) <= {0, 1}
    with pytest.raises(ConfigError, match="data.path"):
        D.FolderSource(str(tmp_path / "missing"), 16)


def test_tfds_source_with_mock_data_and_fail_fast(tmp_path):
    import tensorflow_datasets as tfds

    cfg = D.image_data_config(source="tfds", tfds_name="mnist", image_size=32, channels=1, num_threads=1)
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        batch = next(iter(D.image_dataset(cfg, "train", 5, seed=0)))
    assert batch["image"].shape == (5, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and np.all((batch["label"] >= 0) & (batch["label"] < 10))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        D.TfdsSource("mnist", "train", str(tmp_path), 32, 1)


def test_arrays_source_scales_latents_and_passes_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(30, 4, 4, 4)).astype(np.float32)
    emb = rng.normal(size=(30, 5, 8)).astype(np.float32)
    mask = np.ones((30, 5), bool)
    path = str(tmp_path / "lat.npz")
    np.savez(path, latents=lat, label=np.arange(30) % 3, text_emb=emb, text_mask=mask)
    cfg = D.image_data_config(source="arrays", path=path, image_size=4, channels=4, latent_scale=0.5,
                              val_size=3, text=True, text_emb_shape=(5, 8), num_threads=1)
    src = D.ArraySource(path, scale=0.5)
    np.testing.assert_allclose(src[4]["image"], lat[4] * 0.5)
    batch = next(iter(D.image_dataset(cfg, "train", 4, seed=0)))
    assert batch["image"].shape == (4, 4, 4, 4) and batch["text_emb"].shape == (4, 5, 8)
    assert set(D.example_shapes(cfg)) == set(batch)
    np.save(str(tmp_path / "lat.npy"), lat)
    assert len(D.ArraySource(str(tmp_path / "lat.npy"))) == 30


def test_glyph_sizes_narrow_every_split_and_bad_names_fail():
    large = glyphs.size_indices(("large",))
    assert large == (1,) and glyphs.size_indices(()) is None
    for split in ("train", "holdout", "all"):
        attrs = [glyphs.example(0, i, split, sizes=large)[1] for i in range(40)]
        assert all(a[2] == 1 for a in attrs)
        if split == "holdout":
            assert all(glyphs.is_held_out(glyphs.combo_index(a)) for a in attrs)
        if split == "train":
            assert not any(glyphs.is_held_out(glyphs.combo_index(a)) for a in attrs)
    cfg = D.image_data_config(glyph_sizes=("large",))
    source = D.image_source(cfg, "train")
    assert {int(source[i]["attrs"][2]) for i in range(30)} == {1}
    with pytest.raises(ConfigError, match="glyph_sizes"):
        D.image_source(D.image_data_config(glyph_sizes=("huge",)), "train")
