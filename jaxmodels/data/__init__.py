"""Data pipelines (grain): every batch is a dict of numpy arrays, every iterator checkpointable.

Text / LM:   text.py (corpus -> cached tokens -> 90/10 split -> random windows -> batches),
             sources.py (file / embedded stdlib / tfds corpora, pre-tokenized files),
             tokenizers.py (char, byte; GPT-2 BPE, tokenizer.json, SentencePiece via libraries),
             sort.py (minGPT's generated sorting task).
Images:      images.py, glyphs.py.   Instruction tuning: instruct.py.
"""
