"""Optional text preprocessing, set as `data.preprocess` (a callable str -> str)."""

from __future__ import annotations


def segment_words(text: str) -> str:
    """Vietnamese word segmentation (`điện thoại` -> `điện_thoại`), which PhoBERT expects.

    Uses pyvi's CRF segmenter, which ships its model: pip install -e '.[phobert]'.
    """
    try:
        from pyvi import ViTokenizer
    except ImportError as err:
        raise ImportError(
            "data.preprocess=segment_words needs pyvi: pip install -e '.[phobert]'"
        ) from err
    return ViTokenizer.tokenize(text)
