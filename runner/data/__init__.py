"""Causal-LM SFT data: files -> records -> conversations -> token examples -> batches.

Typical use by a trainer::

    prepared = prepare_data(files, tokenizer, max_length=512, eval_fraction=0.05)
    collator = make_collator(tokenizer, packing=True)   # packed: run the model with use_cache=False
    Trainer(..., train_dataset=prepared.train, eval_dataset=prepared.eval, data_collator=collator)

This package depends on no other runner package (data flows spec -> registry -> data ->
train -> outputs); it takes plain parameters.
"""

from runner.data.causal import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    Encoded,
    EncodeOptions,
    Example,
    TemplateError,
    encode,
    encode_conversation,
    encode_text,
    to_example,
    tokenize_conversation,
)
from runner.data.formats import (
    FORMATS,
    TEXT_ROLE,
    Conversation,
    DomainPrefix,
    RecordError,
    RecordOptions,
    normalize_record,
    resolve_fields,
)
from runner.data.kinds import detect_format
from runner.data.pipeline import PreparedData, build_examples, prepare_data, split_eval
from runner.data.reading import ReadOptions, read_file, read_records
from runner.data.records import DataFileError, ReadResult, Record
from runner.data.report import BadRecord, BadRecordsError, DataError, DataReport, LengthStats, Location, enforce_policy

# The collators need torch and transformers (~3 s to import); load them on first use so
# that reading and checking data files stays fast.
_COLLATE = (
    "EmptyBatchError",
    "PackingCollator",
    "PadCollator",
    "length_grouped_order",
    "make_collator",
    "pad_token_id_for",
    "require_trainable_tokens",
    "trainable_tokens",
)


def __getattr__(name: str) -> object:
    if name in _COLLATE:
        from runner.data import collate

        return getattr(collate, name)
    raise AttributeError(f"module 'runner.data' has no attribute {name!r}")


__all__ = [
    "CHATML_TEMPLATE",
    "FORMATS",
    "IGNORE_INDEX",
    "TEXT_ROLE",
    "BadRecord",
    "BadRecordsError",
    "Conversation",
    "DataError",
    "DataFileError",
    "DataReport",
    "DomainPrefix",
    "EmptyBatchError",
    "EncodeOptions",
    "Encoded",
    "Example",
    "LengthStats",
    "Location",
    "PackingCollator",
    "PadCollator",
    "PreparedData",
    "ReadOptions",
    "ReadResult",
    "Record",
    "RecordError",
    "RecordOptions",
    "TemplateError",
    "build_examples",
    "detect_format",
    "encode",
    "encode_conversation",
    "encode_text",
    "enforce_policy",
    "length_grouped_order",
    "make_collator",
    "normalize_record",
    "pad_token_id_for",
    "prepare_data",
    "read_file",
    "read_records",
    "require_trainable_tokens",
    "resolve_fields",
    "split_eval",
    "to_example",
    "tokenize_conversation",
    "trainable_tokens",
]
