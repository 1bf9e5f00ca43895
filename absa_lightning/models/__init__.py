from absa_lightning.models.e5 import packaged_e5_small
from absa_lightning.models.encoder import (
    encoder_from_spec,
    encoder_spec,
    packaged_minilm,
    pretrained,
    scratch_bert,
)
from absa_lightning.models.network import AspectOutputs, AspectSentimentNet, HashedNgramBranch

__all__ = [
    "AspectOutputs",
    "AspectSentimentNet",
    "HashedNgramBranch",
    "encoder_from_spec",
    "encoder_spec",
    "packaged_e5_small",
    "packaged_minilm",
    "pretrained",
    "scratch_bert",
]
