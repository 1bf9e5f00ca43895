from absa_lightning.data.datamodule import AspectSentimentDataModule, AspectSentimentDataset
from absa_lightning.data.formats import DataError, Example, read_csv, read_jsonl, read_semeval_xml

__all__ = [
    "AspectSentimentDataModule",
    "AspectSentimentDataset",
    "DataError",
    "Example",
    "read_csv",
    "read_jsonl",
    "read_semeval_xml",
]
