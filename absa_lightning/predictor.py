"""Run a trained model on new comments: `AspectSentimentPredictor`.

What the probabilities mean. For each comment and aspect the network gives a softmax over
C = 1 + P classes: absent, then the polarities. The predictor reports

- `mentioned_probability` = P(mentioned) = 1 - softmax[absent]: that the comment speaks of the
  aspect at all, whatever the polarity;
- `polarity_probability` = P(polarity | mentioned) = softmax[polarity] / P(mentioned): how sure
  the model is of the polarity, given that the aspect is mentioned.

Their product is softmax[polarity], the probability of the (aspect, polarity) pair. These are the
model's scores; they are not calibrated unless the model was (focal loss, in particular, pushes
them towards 0.5).

Decoding. `threshold=None` (the default) decodes as the training metrics do: the class with the
highest softmax, so an aspect is mentioned when P(mentioned) beats every single class. A number,
or a mapping from aspect to number (aspects not named keep the default), says instead: mentioned
iff P(mentioned) >= threshold; the polarity is then the most probable one. A model trained with
`tune_thresholds=true` brings its per-aspect thresholds (tuned on dev), which are then the
default (`absa_lightning.thresholds`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from absa_lightning.data.batching import (
    TokenizedTexts,
    length_sorted_batches,
    pad_batch,
    pad_ngram_ids,
    tokenize,
)
from absa_lightning.data.preprocess import build_preprocess, preprocess_spec
from absa_lightning.errors import AbsaUserError
from absa_lightning.models import AspectSentimentNet, HashedNgramBranch
from absa_lightning.models.encoder import without_pooler
from absa_lightning.models.ngrams import valid_ngram_settings
from absa_lightning.module import AspectSentimentModule
from absa_lightning.thresholds import Threshold, aspect_thresholds, decode

CONFIG_FILE = "absa_config.json"  # aspects, polarities, thresholds, the training hyper-parameters
HEADS_FILE = "heads.safetensors"  # every network weight outside the encoder
ENCODER_DIR = "encoder"  # the encoder and its tokenizer, in Hugging Face `save_pretrained` form
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AspectPrediction:
    """One aspect a comment mentions."""

    aspect: str
    polarity: str
    polarity_probability: float  # P(polarity | mentioned)
    mentioned_probability: float  # P(mentioned), whatever the polarity


@dataclass(frozen=True)
class CommentPrediction:
    text: str
    aspects: list[AspectPrediction]  # in the model's aspect order
    truncated: bool  # longer than max_length tokens: only the start was read

    def to_record(self) -> dict[str, Any]:
        """The JSON Lines record that `data=jsonl` training and `eval.py predictions=` read."""
        labels = [
            {
                **asdict(a),
                "polarity_probability": round(a.polarity_probability, 6),
                "mentioned_probability": round(a.mentioned_probability, 6),
            }
            for a in self.aspects
        ]
        return {"text": self.text, "labels": labels, "truncated": self.truncated}


class AspectSentimentPredictor:
    """A trained network and its tokenizer, ready for new comments; needs no training data.

    >>> p = AspectSentimentPredictor.from_checkpoint("outputs/runs/<run>/checkpoints/best.ckpt")
    >>> p.predict(["Pin trâu, camera hơi mờ"])[0].aspects
    [AspectPrediction(aspect='BATTERY', polarity='Positive', ...), ...]

    Comments are cut to `max_length` tokens (the training data's; `truncated` says when) and run
    `batch_size` at a time, shortest first, on `device` (None: CUDA when there is one).
    `hparams`, the training hyper-parameters, are kept for the record: `save_pretrained` writes
    them.
    """

    def __init__(
        self,
        net: AspectSentimentNet,
        tokenizer: PreTrainedTokenizerBase,
        aspects: Sequence[str],
        polarities: Sequence[str],
        *,
        max_length: int = 128,
        preprocess: Mapping[str, Any] | None = None,
        threshold: Threshold = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        hparams: Mapping[str, Any] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for a token, got {max_length}")
        self.aspects, self.polarities = list(aspects), list(polarities)
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        # A name from the project's own functions, never an object a model file describes.
        self.preprocess_config = preprocess_spec(preprocess, "preprocess")
        self._preprocess: Callable[[str], str] | None = build_preprocess(self.preprocess_config)
        self.threshold = dict(threshold) if isinstance(threshold, Mapping) else threshold
        self.thresholds = aspect_thresholds(threshold, self.aspects)  # (A,), NaN: argmax
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.eval().to(self.device)
        # How the n-gram branch's ids are made; None: a network without the branch.
        self.ngram_hashing = getattr(net, "ngram_hashing", None)
        self.hparams = dict(hparams or {})

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options: Any) -> AspectSentimentPredictor:
        """From a Lightning checkpoint of `train.py`; `options` as for the constructor. The
        checkpoint's tuned thresholds, if any, are the default; a `threshold` in `options`
        replaces them."""
        module = AspectSentimentModule.from_checkpoint(path)  # its preprocess checked there
        hparams = dict(module.hparams)
        options.setdefault("threshold", module.thresholds or None)  # tuned on dev, if they were
        return cls(
            module.net,
            module.tokenizer,
            hparams["aspects"],
            hparams["polarities"],
            max_length=hparams.get("max_length", 128),
            preprocess=hparams.get("preprocess"),
            hparams=hparams,
            **options,
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, **options: Any) -> AspectSentimentPredictor:
        """From a folder written by `save_pretrained` (`absa-export`), offline.

        The folder's threshold is the default; a `threshold` in `options` replaces it.
        """
        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        config = read_export_config(config_path)  # checked before anything else is read
        encoder_dir = str(folder / ENCODER_DIR)
        # Weights from safetensors only (no pickle), code from this package only.
        with quiet_transformers():  # else it reports the pooler, dropped in training, missing
            encoder = AutoModel.from_pretrained(
                encoder_dir, use_safetensors=True, trust_remote_code=False
            )
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir, trust_remote_code=False)
        aspects, polarities = config["aspects"], config["polarities"]
        num_classes = 1 + len(polarities)
        ngrams = config.get("ngrams")  # absent in folders exported before the branch
        branch = HashedNgramBranch(len(aspects), num_classes, **ngrams) if ngrams else None
        net = AspectSentimentNet(
            without_pooler(encoder), len(aspects), num_classes, **config["head"], ngrams=branch
        )
        missing, unexpected = net.load_state_dict(load_file(folder / HEADS_FILE), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise AbsaUserError(
                f"missing weights {missing}, unexpected {unexpected}",
                str(folder / HEADS_FILE),
                "export the model again with absa-export",
            )
        options.setdefault("threshold", config["threshold"])
        return cls(
            net,
            tokenizer,
            aspects,
            polarities,
            max_length=config["max_length"],
            preprocess=config["preprocess"],
            hparams=config["training"],
            **options,
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """A self-contained folder that `from_pretrained` loads without this package's training
        code: the encoder and tokenizer (Hugging Face form), the heads (safetensors), a JSON."""
        folder = Path(folder)
        with quiet_transformers():
            self.net.encoder.save_pretrained(folder / ENCODER_DIR)
        self.tokenizer.save_pretrained(folder / ENCODER_DIR)
        heads = {
            name: weight.detach().cpu().contiguous()
            for name, weight in self.net.state_dict().items()
            if not name.startswith("encoder.")
        }
        save_file(heads, folder / HEADS_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "aspects": self.aspects,
            "polarities": self.polarities,
            "max_length": self.max_length,
            "preprocess": self.preprocess_config,
            "threshold": self.threshold,
            "head": {  # what AspectSentimentNet needs besides the encoder, read off the net
                "projection_dim": self.net.projection[-1].out_features,
                "attention_heads": self.net.attention.num_heads,
                "dropout": self.net.dropout.p,
            },
            "ngrams": self.net.ngrams.settings if self.net.ngrams is not None else None,
            "training": self.hparams,
        }
        (folder / CONFIG_FILE).write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return folder

    def encode(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The network's inputs as the training batches have them: token ids and mask, prepared,
        cut to `max_length` and padded to the longest comment, and `ngram_ids` when the network
        has an n-gram branch; and (N,) whether each comment was cut."""
        tokenized = self._tokenize(texts)
        return self._inputs(tokenized, range(len(texts))), tokenized.truncated

    def _tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        if self._preprocess is not None:
            texts = [self._preprocess(t) for t in texts]
        return tokenize(self.tokenizer, texts, self.max_length, ngrams=self.ngram_hashing)

    def _inputs(self, tokenized: TokenizedTexts, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of these `rows` of `tokenized`: the network's keyword arguments."""
        input_ids, attention_mask = pad_batch(
            [tokenized.token_ids[j] for j in rows], self.tokenizer.pad_token_id
        )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if tokenized.ngram_ids is not None:
            inputs["ngram_ids"] = pad_ngram_ids([tokenized.ngram_ids[j] for j in rows])
        return inputs

    @torch.inference_mode()
    def predict_proba(
        self, texts: Sequence[str], progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, A, C) softmax over {absent, polarities…} per comment and aspect, on the CPU, and
        (N,) whether each comment was cut to `max_length`.

        A blank comment mentions nothing: it is not run, and gets P(absent) = 1.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"comment {i} is a {type(text).__name__}, not a str")
        probs = torch.zeros(len(texts), len(self.aspects), 1 + len(self.polarities))
        probs[..., 0] = 1.0
        truncated = torch.zeros(len(texts), dtype=torch.bool)
        live = [i for i, text in enumerate(texts) if text.strip()]
        tokenized = self._tokenize([texts[i] for i in live])
        truncated[live] = tokenized.truncated
        lengths = [len(ids) for ids in tokenized.token_ids]
        batches = length_sorted_batches(lengths, self.batch_size)  # positions in `live`
        if progress:
            batches = track(batches, description="Predicting", console=Console(stderr=True))
        for batch in batches:
            inputs = self._inputs(tokenized, batch)
            logits = self.net(**{k: v.to(self.device) for k, v in inputs.items()}).logits
            probs[[live[j] for j in batch]] = logits.float().softmax(dim=-1).cpu()
        return probs, truncated

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[CommentPrediction]:
        """Per comment, the aspects it mentions, each with its polarity and probabilities."""
        probs, truncated = self.predict_proba(texts, progress)
        classes = decode(probs, self.thresholds)  # (N, A), 0 = absent
        mentioned_p = 1.0 - probs[..., 0]  # (N, A)
        chosen_p = probs.gather(-1, classes.unsqueeze(-1)).squeeze(-1)  # (N, A)
        polarity_p = chosen_p / mentioned_p.clamp(min=torch.finfo(probs.dtype).tiny)
        rows = zip(
            texts,
            classes.tolist(),
            polarity_p.tolist(),
            mentioned_p.tolist(),
            truncated.tolist(),
            strict=True,
        )
        return [
            CommentPrediction(
                text,
                [
                    AspectPrediction(self.aspects[a], self.polarities[c - 1], pol_p[a], men_p[a])
                    for a, c in enumerate(cls)
                    if c
                ],
                cut,
            )
            for text, cls, pol_p, men_p, cut in rows
        ]


_EXPORT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "aspects": lambda v: isinstance(v, list) and bool(v) and all(isinstance(a, str) for a in v),
    "polarities": lambda v: isinstance(v, list) and bool(v) and all(isinstance(p, str) for p in v),
    "max_length": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
    "head": lambda v: (
        isinstance(v, dict)
        and set(v) <= {"projection_dim", "attention_heads", "dropout"}
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v.values())
    ),
    "ngrams": lambda v: v is None or valid_ngram_settings(v),
    "threshold": lambda v: v is None or isinstance(v, int | float | dict),
    "preprocess": lambda v: True,  # checked by preprocess_spec, with its own message
    "training": lambda v: isinstance(v, dict),  # for the record: read, never acted on
}


_OPTIONAL_EXPORT_FIELDS = {"ngrams"}  # folders exported before the n-gram branch lack it


def read_export_config(path: Path) -> dict[str, Any]:
    """`absa_config.json`, every field checked: plain data of the expected shape, the
    preprocessing a name from `absa_lightning.data.preprocess`. Nothing in it is imported,
    instantiated or called."""
    if not path.is_file():
        raise AbsaUserError(
            f"not an exported model (no {CONFIG_FILE})",
            str(path.parent),
            "give a folder written by absa-export, or a .ckpt file",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AbsaUserError(f"not JSON ({err})", str(path), "export the model again") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        version = config.get("format_version") if isinstance(config, dict) else None
        raise AbsaUserError(
            f"format_version {version!r}, this version reads {FORMAT_VERSION}",
            str(path),
            "export the model again with this version's absa-export",
        )
    for field, valid in _EXPORT_FIELDS.items():
        if field not in config and field in _OPTIONAL_EXPORT_FIELDS:
            continue
        if field not in config:
            raise AbsaUserError(f"no field {field!r}", str(path), "export the model again")
        if not valid(config[field]):
            raise AbsaUserError(
                f"field {field!r} holds {config[field]!r:.80}", str(path), "export the model again"
            )
    config["preprocess"] = preprocess_spec(config["preprocess"], f"{path}: field 'preprocess'")
    aspect_thresholds(config["threshold"], config["aspects"])  # a bad one raises here
    return config


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Transformers' warnings and progress bars off for a moment."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def load_predictor(path: str | Path, **options: Any) -> AspectSentimentPredictor:
    """A checkpoint file (`from_checkpoint`) or an exported folder (`from_pretrained`)."""
    path = Path(path)
    if path.is_dir():
        return AspectSentimentPredictor.from_pretrained(path, **options)
    if path.is_file():
        return AspectSentimentPredictor.from_checkpoint(path, **options)
    raise AbsaUserError("no such checkpoint file or exported folder", str(path), "check the path")
