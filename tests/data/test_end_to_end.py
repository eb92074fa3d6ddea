"""An image folder end to end on the CPU: launch.encode (VAE latents) -> launch.train
(dit_b2.py:smoke, sd_light.py with cached captions) -> launch.sample (PNG decoded through
the VAE) [-> launch.evaluate --fid --is, slow]."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxmodels.data import glyphs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
VAE = os.path.join(FIXTURES, "vae")


def _run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    """32 px captioned shapes -> 16x16x4 latents -> dit_b2.py:smoke -> launch.sample."""
    work = tmp_path_factory.mktemp("e2e")
    glyphs.write_folder(str(work / "images"), 48, image_size=32)
    out = _run("launch.encode", "--images", "images", "--vae", VAE, "--out", "latents", "--image-size", "32",
               "--batch-size", "8", "--shard-size", "16", "--flip", "random", "--no-progress", cwd=work)
    assert "--config.data.latent_scale=0.18215" in out
    _run("launch.train", "--config", os.path.join(ROOT, "configs", "dit_b2.py:smoke"), "--workdir", "runs/dit",
         "--config.data.path=latents", f"--config.data.vae={VAE}", cwd=work)
    _run("launch.sample", "--workdir", "runs/dit", "--num", "8", "--steps", "2", cwd=work)
    return work


@pytest.mark.slow   # three launches (encode, train, sample): 1-2 min on two loaded cores
def test_encode_train_sample_decodes_pictures(dit_run):
    samples = os.path.join(dit_run, "runs", "dit", "samples")
    png = [f for f in os.listdir(samples) if f.startswith("sample_") and f.endswith(".png")]
    npz = np.load(os.path.join(samples, png[0][:-4] + ".npz"))
    assert npz["samples"].shape == (8, 16, 16, 4)        # latents, as sampled
    assert npz["images"].shape == (8, 32, 32, 3) and npz["images"].dtype == np.uint8
    grid = np.asarray(Image.open(os.path.join(samples, png[0])))
    assert grid.shape[-1] == 3 and grid.shape[0] > 32     # a grid of decoded RGB pictures


@pytest.mark.slow   # three launches (encode with captions, train, sample): 1-4 min on two loaded cores
def test_sd_light_trains_on_latents_and_cached_clip_captions(tmp_path):
    from tests.data.test_captions import _with_tokenizer

    clip = _with_tokenizer(tmp_path, "clip")
    glyphs.write_folder(str(tmp_path / "images"), 16, image_size=16)
    out = _run("launch.encode", "--images", "images", "--vae", VAE, "--captions", clip, "--out", "latents",
               "--image-size", "16", "--batch-size", "8", "--shard-size", "8", "--no-progress", cwd=tmp_path)
    flags = out.strip().split("train with ", 1)[1].split()
    assert "--config.data.text_emb_shape=(16,32)" in flags
    model = ["--config.model.input_size=8", "--config.model.in_channels=4", "--config.data.image_size=8",
             "--config.data.channels=4", "--config.data.source=arrays", "--config.data.val_size=2",
             "--config.model.context_dim=32", "--config.train.eval_batches=0"]
    _run("launch.train", "--config", os.path.join(ROOT, "configs", "sd_light.py:smoke"), "--workdir", "runs/sd",
         *flags, *model, cwd=tmp_path)
    _run("launch.sample", "--workdir", "runs/sd", "--num", "4", "--steps", "2", "--cfg", "3", cwd=tmp_path)
    samples = tmp_path / "runs" / "sd" / "samples"
    npz = np.load(samples / [f for f in os.listdir(samples) if f.endswith(".npz")][0])
    assert npz["images"].shape == (4, 16, 16, 3)


@pytest.mark.slow   # the full FID Inception twice (samples and reference): minutes on two cores
def test_evaluate_fid_against_the_image_folder(dit_run, tmp_path):
    from safetensors.numpy import save_file

    sys.path.insert(0, FIXTURES)
    from inception_weights import state_dict

    save_file(state_dict(), str(tmp_path / "inception.safetensors"))
    out = _run("launch.evaluate", "--fid", "--is", "--is-splits", "2", "--workdir", "runs/dit", "--ref", "images",
               "--num", "16", "--steps", "2", "--inception", str(tmp_path / "inception.safetensors"), "--batch-size", "16",
               cwd=dit_run)
    import json

    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["num"] == 16 and np.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert 1.0 <= metrics["is"] <= 16 and metrics["is_std"] >= 0   # one pass gives both
    shutil.rmtree(tmp_path)
