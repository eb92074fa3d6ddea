"""Encode an image folder (or a prepared tfds dataset) into VAE latent shards for training.

    python -m launch.encode --images data/my_images --vae models/sd-vae-ft-mse --out data/my_latents \\
        [--image-size 256] [--flip none|random|both] [--batch-size 32] [--shard-size 1024] [--sample]
    python -m launch.train --config configs/dit_b2.py --config.data.path=data/my_latents

--images: one sub-folder per class (labels = sorted folder names); an <image>.txt beside an
image is its caption. --tfds NAME reads a prepared tfds dataset instead (never downloads);
--embedded N encodes N of the generated shapes (no files needed). Without --vae the
pixels themselves are stored (pixel-space models). --captions ENCODER caches each caption's
embedding (+ mask) from a T5 (PixArt: 120 tokens) or CLIP text encoder folder (Stable
Diffusion: 77); train with model.text_encoder=precomputed, data.text=True and
data.text_emb_shape=(length, width) as printed at the end. Killed, the same command resumes where
it stopped; the output folder is what `data.source=arrays` reads (data.path=<--out>).
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import os
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", help="image folder: <class>/<image> (+ optional <image>.txt captions)")
    where.add_argument("--tfds", help="name of an already prepared tfds dataset")
    where.add_argument("--embedded", type=int, help="encode this many of the generated shapes")
    parser.add_argument("--tfds-data-dir", default="", help="tfds data_dir (default ~/tensorflow_datasets)")
    parser.add_argument("--split", default="train", help="tfds split")
    parser.add_argument("--out", required=True, help="output shard folder (resumed if it exists)")
    parser.add_argument("--vae", default="", help="diffusers AutoencoderKL folder (or a configs/vae_small.py-style "
                        "training run); none: store pixels")
    parser.add_argument("--image-size", type=int, default=256, help="resize shorter side + center crop")
    parser.add_argument("--flip", default="none", help="none | random | both (image and mirror)")
    parser.add_argument("--sample", action="store_true", help="store a draw of the latent, not its mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1024, help="items per shard file")
    parser.add_argument("--captions", default="", help="T5 / CLIP text encoder folder: cache caption embeddings")
    parser.add_argument("--caption-len", type=int, default=0, help="caption tokens (default: T5 120, CLIP 77)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from jaxmodels.data.encode import encode_dataset, image_items
    try:
        if args.images:
            source, path = "folder", args.images
        elif args.tfds:
            source, path = "tfds", args.tfds
        else:
            source, path = "embedded", str(args.embedded)
        items = image_items(source, path, args.image_size, args.tfds_data_dir, args.split)
        text_encoder, text = None, {}
        if args.captions:
            from jaxmodels.data.captions import caption_encoder
            text_encoder, text = caption_encoder(args.captions, args.caption_len, args.batch_size)
            text["encoder"] = os.path.abspath(args.captions)
        manifest = encode_dataset(
            items, args.out, vae_path=args.vae, batch_size=args.batch_size, shard_size=args.shard_size,
            flip=args.flip, sample=args.sample, seed=args.seed, progress=not args.no_progress,
            text_encoder=text_encoder,
            options={"source": source, "path": path, "image_size": args.image_size, "split": args.split,
                     "captions": text})
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scale = manifest["options"]["scaling_factor"]
    flags = f"--config.data.source=arrays --config.data.path={args.out} --config.data.latent_scale={scale}"
    if args.vae:
        flags += f" --config.data.vae={args.vae}"
    if text:
        flags += (f" --config.data.text=True --config.data.text_emb_shape=({text['length']},{text['dim']})"
                  f" --config.model.text_encoder=precomputed --config.model.text_dim={text['dim']}"
                  f" --config.model.text_len={text['length']}")
    print(f"wrote {manifest['num_items']} items to {args.out}; train with {flags}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
