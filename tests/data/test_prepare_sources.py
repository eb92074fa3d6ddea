"""launch.prepare from a Hugging Face `datasets` dataset and from a tfds dataset: the shards
hold each example's tokens + EOT, in the dataset's order."""
import os
import sys
import types

import numpy as np
import pytest

from jaxmodels.data.prepare import PrepareSpec, prepare
from jaxmodels.data.shards import read_shard_folder
from jaxmodels.data.tokenizers import build_tokenizer

GPT2 = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizers", "gpt2")
DOCS = ["First example.", "Second one, with\nnewlines\n\n", "héllo 世界 🙂", "x" * 3000 + "\nend"]


def all_tokens(folder):
    s = read_shard_folder(str(folder))
    return np.concatenate([s["val"][:], s["train"][:]]).astype(np.int64).tolist()


def expected_tokens(docs):
    tok = build_tokenizer({"tokenizer": "gpt2", "vocab_path": GPT2})
    return [i for d in docs for i in tok.encode(d) + [tok.eot]]


def spec(out, **kw):
    return PrepareSpec(inputs=[], out_dir=str(out), vocab_path=GPT2, shard_tokens=900, val_tokens=300,
                       chunk_bytes=1000, workers=1, progress=False, **kw)


class FakeDatasetDict(dict):
    pass


def fake_datasets(calls):
    """The two entry points launch.prepare uses, with the `datasets` library's signatures:
    load_from_disk(path) -> Dataset | DatasetDict, load_dataset(name, split=, streaming=)
    -> an iterable of {column: value} records. (`datasets` is not a jaxmodels dependency.)"""
    mod = types.ModuleType("datasets")
    mod.DatasetDict = FakeDatasetDict

    def load_from_disk(path):
        calls.append(("load_from_disk", path))
        return FakeDatasetDict(train=[{"text": d, "id": i} for i, d in enumerate(DOCS)], test=[{"text": "no"}])

    def load_dataset(name, split=None, streaming=False):
        calls.append(("load_dataset", name, split, streaming))
        return iter([{"text": d} for d in DOCS[::-1]])
    mod.load_from_disk, mod.load_dataset = load_from_disk, load_dataset
    return mod


def test_hf_dataset_saved_folder_and_name(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(calls))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')  # as save_to_disk writes
    m = prepare(spec(tmp_path / "a", hf_dataset=str(saved)))
    assert calls == [("load_from_disk", str(saved))]
    assert m["complete"] and all_tokens(tmp_path / "a") == expected_tokens(DOCS)  # split "train" only
    prepare(spec(tmp_path / "b", hf_dataset="someone/corpus", hf_split="validation"))
    assert calls[-1] == ("load_dataset", "someone/corpus", "validation", True)  # streamed, never whole
    assert all_tokens(tmp_path / "b") == expected_tokens(DOCS[::-1])
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        prepare(spec(tmp_path / "c", hf_dataset="someone/corpus"))


def test_hf_dataset_with_the_real_library(tmp_path):
    datasets = pytest.importorskip("datasets", reason="`datasets` is optional (not a jaxmodels dependency)")
    saved = str(tmp_path / "saved")
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": DOCS})).save_to_disk(saved)
    prepare(spec(tmp_path / "out", hf_dataset=saved))
    assert all_tokens(tmp_path / "out") == expected_tokens(DOCS)


def test_tfds_dataset_built_locally(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class PrepareTinyText(tfds.core.GeneratorBasedBuilder):
        """Four text examples in train, one in test (array_record: no tensorflow needed)."""
        VERSION = tfds.core.Version("1.0.0")
        # A one-part module name: tfds then skips looking for the builder's code as a package
        # resource, which needs `importlib_resources` (missing from some tfds installs).
        __module__ = "prepare_tiny_text_builder"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "n": tfds.features.Scalar(np.int32)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(DOCS), "test": self._generate_examples(["other"])}

        def _generate_examples(self, docs):
            for i, d in enumerate(docs):
                yield i, {"text": d, "n": i}

    data_dir = str(tmp_path / "tfds")
    PrepareTinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
    source = tfds.data_source("prepare_tiny_text", split="train", data_dir=data_dir, download=False)
    order = [DOCS[int(source[i]["n"])] for i in range(len(source))]  # tfds may reorder examples
    assert sorted(order) == sorted(DOCS)
    m = prepare(spec(tmp_path / "out", tfds="prepare_tiny_text", tfds_data_dir=data_dir))
    assert m["complete"] and all_tokens(tmp_path / "out") == expected_tokens(order)
    from jaxmodels.config import ConfigError
    with pytest.raises(ConfigError, match="no field 'body'.*--text_key"):
        prepare(spec(tmp_path / "bad", tfds="prepare_tiny_text", tfds_data_dir=data_dir, text_key="body"))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        prepare(spec(tmp_path / "none", tfds="prepare_tiny_text", tfds_data_dir=str(tmp_path / "empty")))
