"""Data layer: read records, validate them as ``sft``, ``pairs``, ``forget``, ``scored`` or ``unpaired``, tokenise them into Sequences."""
from unigrad.data.errors import DataError
from unigrad.data.formats import (
    FORMATS, ForgetExample, PairExample, ScoredExample, SFTExample, parse, parse_forget, parse_pair, parse_scored, parse_sft,
    UnpairedExample, parse_unpaired,
)
from unigrad.data.sources import Record, read_records
from unigrad.data.tokenization import (
    count_truncated,
    encode_completion,
    encode_prompt,
    fit,
    load_dataset_sequences,
    prompt_text,
    tokenize,
)

__all__ = [
    "DataError", "FORMATS", "PairExample", "Record", "SFTExample", "count_truncated", "encode_completion",
    "encode_prompt", "fit", "load_dataset_sequences", "parse", "parse_pair", "parse_sft", "prompt_text",
    "read_records", "tokenize", "ForgetExample", "ScoredExample", "parse_forget", "parse_scored", "UnpairedExample", "parse_unpaired",
]
