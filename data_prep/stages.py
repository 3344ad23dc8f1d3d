"""Default filter lists per modality: cheap heuristics first, model filters last (FineWeb / StarCoder order)."""

from __future__ import annotations

from collections.abc import Sequence

from data_prep.filters.base import BaseFilter
from data_prep.filters.c4_quality import C4QualityFilter
from data_prep.filters.caption import CaptionFilter
from data_prep.filters.code_heuristics import CodeHeuristicsFilter
from data_prep.filters.code_language import CodeLanguageFilter
from data_prep.filters.code_syntax import CodeSyntaxFilter
from data_prep.filters.entropy import EntropyFilter
from data_prep.filters.exact_dedup import ExactDedupFilter
from data_prep.filters.fineweb_quality import FineWebQualityFilter
from data_prep.filters.gopher_quality import GopherQualityFilter
from data_prep.filters.gopher_repetition import GopherRepetitionFilter
from data_prep.filters.image_decode import ImageDecodeFilter
from data_prep.filters.language import LanguageFilter
from data_prep.filters.length import LengthFilter
from data_prep.filters.read_error import ReadErrorFilter


def text_filters(
    *,
    max_chars: int = 1_000_000,
    entropy_threshold: float = 0.8,
    entropy_window: int = 64,
    quality: BaseFilter | None = None,
    langid: bool = True,
    languages: Sequence[str] = (),
    langid_model: str = "py3langid",
) -> list[BaseFilter]:
    # The language label comes before the Gopher rules: their stop-word rule applies to English only.
    language = [LanguageFilter(languages=languages, model=langid_model)] if langid else []
    filters: list[BaseFilter] = [
        ReadErrorFilter(),
        LengthFilter(max_chars=max_chars),
        ExactDedupFilter(),
        *language,
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(),
        FineWebQualityFilter(),
        EntropyFilter(threshold=entropy_threshold, window=entropy_window, min_tail=entropy_window // 2),
    ]
    return filters + ([quality] if quality is not None else [])


def code_filters(*, max_chars: int = 1_000_000, python_compile: bool = True) -> list[BaseFilter]:
    return [
        ReadErrorFilter(),
        LengthFilter(max_chars=max_chars),
        CodeLanguageFilter(),
        ExactDedupFilter(),
        CodeHeuristicsFilter(),
        CodeSyntaxFilter(python_compile=python_compile),
    ]


def image_filters(*, min_side: int = 16, clip: BaseFilter | None = None) -> list[BaseFilter]:
    filters: list[BaseFilter] = [
        ReadErrorFilter(),
        CaptionFilter(),
        ImageDecodeFilter(min_side=min_side),
        ExactDedupFilter(),
    ]
    return filters + ([clip] if clip is not None else [])
