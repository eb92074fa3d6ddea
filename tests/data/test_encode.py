"""launch.encode: image folder -> VAE latent shards, resumable, read by the "arrays" source."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs
from jaxmodels.data.latents import LatentShards, read_manifest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
VAE = os.path.join(ROOT, "tests", "fixtures", "vae")


def _folder(root, n=10):
    """n generated images in one class folder a/, sorted names img_00.png ..."""
    os.makedirs(root / "a")
    for i in range(n):
        image, attrs = glyphs.example(0, i, "train", 16)
        Image.fromarray(image).save(root / "a" / f"img_{i:02d}.png")
        (root / "a" / f"img_{i:02d}.txt").write_text(glyphs.caption(attrs))
    return root


def _encode_cmd(images, out, *extra):
    return [sys.executable, "-m", "launch.encode", "--images", str(images), "--vae", VAE, "--out", str(out),
            "--image-size", "16", "--batch-size", "2", "--shard-size", "2", "--no-progress", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), JAX_PLATFORMS="cpu")


def _shards(folder):
    return {f: np.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".npy")}


def test_kill9_then_rerun_gives_the_same_shards(tmp_path):
    images = _folder(tmp_path / "images")
    full = tmp_path / "full"
    subprocess.run(_encode_cmd(images, full), check=True, env=_env(), cwd=ROOT, capture_output=True)

    # Image 6 becomes a FIFO: the encoder blocks opening it after writing shards 0-2, and
    # is killed -9 there; then the real image comes back and the same command resumes.
    real = (images / "a" / "img_06.png").read_bytes()
    os.remove(images / "a" / "img_06.png")
    os.mkfifo(images / "a" / "img_06.png")
    out = tmp_path / "resumed"
    proc = subprocess.Popen(_encode_cmd(images, out), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "latents_00002.npy").exists():
            assert proc.poll() is None and time.time() < deadline, "the encoder stopped early"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not read_manifest(str(out))["complete"]
    assert not (out / "latents_00003.npy").exists()
    with pytest.raises(ConfigError, match="partly encoded"):
        LatentShards(str(out))
    os.remove(images / "a" / "img_06.png")
    (images / "a" / "img_06.png").write_bytes(real)
    # Also the states a kill during a shard's writes leaves: a stale temp file, and a
    # shard whose label was renamed but whose latents were not.
    (out / "latents_00001.npy.tmp.npy").write_bytes(b"partial")
    os.remove(out / "latents_00001.npy")
    subprocess.run(_encode_cmd(images, out), check=True, env=_env(), cwd=ROOT, capture_output=True)

    a, b = _shards(full), _shards(out)
    assert sorted(a) == sorted(b) and len(a) == 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    shards = LatentShards(str(out))
    assert len(shards) == 10 and shards[3]["latents"].shape == (8, 8, 4)

    # Other options on the same folder: refused, naming what changed.
    r = subprocess.run(_encode_cmd(images, out, "--flip", "both"), env=_env(), cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "options.flip" in r.stderr


def test_shards_match_direct_vae_and_feed_the_dit_b2_config(tmp_path):
    from configs import dit_b2
    from jaxmodels.convert.vae import load_vae
    from jaxmodels.data.encode import encode_dataset, image_items
    from jaxmodels.data.images import image_dataset, to_unit_range

    images = _folder(tmp_path / "images", n=6)
    items = image_items("folder", str(images), 16)
    manifest = encode_dataset(items, str(tmp_path / "z"), VAE, batch_size=2, shard_size=4, flip="both",
                              progress=False)
    assert manifest["num_items"] == 12 and manifest["complete"]
    shards = LatentShards(str(tmp_path / "z"))
    model, params = load_vae(VAE)
    pixels = to_unit_range(items[2]["image"])
    mean, _ = model.apply({"params": params}, np.stack([pixels, pixels[:, ::-1]]))
    np.testing.assert_allclose(shards[4]["latents"], mean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shards[5]["latents"], mean[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(shards[4]["latents"], shards[5]["latents"])

    data = dit_b2.get_config().data
    data.update(path=str(tmp_path / "z"), image_size=8, val_size=2, num_threads=1, prefetch=1)
    batch = next(iter(image_dataset(data, "train", 4, seed=0)))
    assert batch["image"].shape == (4, 8, 8, 4) and batch["label"].dtype == np.int32
    stored = shards.array("latents") * 0.18215
    for row in batch["image"]:
        assert np.min(np.abs(stored - row).reshape(12, -1).max(axis=1)) < 1e-6
