"""The [data] section of a job file: where the records come from, their layout and how they are read."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field

from runner.spec.section import BIG, PATH_PATTERN, PathStr, Section, _one_or_many

DataFormat = Literal[
    "auto",
    "alpaca",
    "sharegpt",
    "messages",
    "text",
    "segments",
    "prompt-completion",
    "pairs",
    "triplets",
    "scored-pairs",
    "image-text",
    "preference",
    "sharegpt-preference",
    "alpaca-preference",
    "unpaired-preference",
]
CanonicalField = Literal[
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "conversations",
    "messages",
    "role",
    "content",
    "loss_weight",
    "reasoning",
    "images",
    "text",
    "segments",
    "prompt",
    "completion",
    "query",
    "positive",
    "negative",
    "sentence1",
    "sentence2",
    "score",
    "image",
    "query_image",
    "task",
    "tools",
    "chosen",
    "rejected",
    "label",
]
CANONICAL_FIELDS: tuple[str, ...] = get_args(CanonicalField)  # one list: the Literal is the source
ChatRole = Literal["system", "user", "assistant", "tool"]
DataSource = Annotated[
    str,
    Field(
        min_length=1,
        pattern=PATH_PATTERN,
        json_schema_extra={"x-hint": "a file path (no control characters)"},  # or hf:ORG/NAME (see `train`)
    ),
]
DataSourceList = Annotated[
    list[DataSource], BeforeValidator(_one_or_many), Field(json_schema_extra={"x-one-or-many": True})
]


class DataSection(Section):
    train: DataSourceList = Field(
        description=(
            "Training data: files (JSON, JSONL, plain text .txt, CSV, TSV, Parquet) or Hub data sets "
            "('hf:ORG/NAME[@REVISION][?split=SPLIT&subset=SUBSET]', read through the datasets library and its "
            "cache). A list is merged in order. Relative paths are relative to the job file."
        ),
        min_length=1,
    )
    eval: DataSourceList = Field(
        default_factory=list,
        description="Held-out evaluation data (files or hf: data sets). Leave empty and set eval_fraction to split "
        "the training data instead.",
    )
    eval_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training records held out for evaluation (deterministic by seed) when no eval files are given.",
    )
    format: DataFormat = Field(
        "auto",
        description=(
            "Record format. 'auto' detects it from the records and reports what it chose. "
            "Causal LMs: alpaca, sharegpt, messages (content a string or a list of typed parts), text, "
            "segments (Axolotl input_output: text segments each with a label), prompt-completion (TRL: "
            "prompt and completion, strings or message lists). Embeddings: pairs, triplets, scored-pairs, image-text. "
            "Preference tuning: preference (prompt / chosen / rejected, as strings or message lists, or chosen and "
            "rejected conversations sharing their prompt), sharegpt-preference (conversations + chosen / rejected "
            "turns), alpaca-preference (instruction, input, chosen, rejected) and unpaired-preference (prompt or "
            "messages + completion + boolean label, for KTO)."
        ),
    )
    fields: dict[CanonicalField, str] = Field(
        default_factory=dict,
        description=(
            "Field mapping: canonical field name -> the name used in your records, e.g. "
            '{instruction = "question", output = "answer"}; for chat records also the keys inside each '
            'message: {role = "from", content = "value", loss_weight = "train"}.'
        ),
    )
    roles: dict[ChatRole, list[Annotated[str, Field(min_length=1)]]] = Field(
        default_factory=dict,
        description=(
            'Chat records: more names for the roles, e.g. {assistant = ["bot", "model"], user = ["me"]}. '
            "Known without it: human/user, gpt/assistant/function_call, system, observation/tool."
        ),
    )
    tools: Literal["render", "drop", "refuse"] = Field(
        "render",
        description=(
            "Records that define tools, when the model's chat template cannot render them: 'render' puts the "
            "definitions in the system prompt (Hermes/Qwen style <tools> block) and tool calls in <tool_call> "
            "tags; 'drop' leaves them out (counted in the data report); 'refuse' makes such records bad records. "
            "A template that renders tools always gets them as they are."
        ),
    )
    reasoning: Literal["train", "mask"] = Field(
        "train",
        description=(
            "Reasoning of assistant messages (reasoning parts, reasoning_content): 'train' trains on it like the "
            "answer, 'mask' keeps it in the input but out of the loss. It is rendered the way the chat template "
            "expects (reasoning_content), else as a <think> block before the answer."
        ),
    )
    images: Literal["refuse", "drop"] = Field(
        "refuse",
        description=(
            "Causal LMs read text only: a record with images (image parts, an 'images' list, <image> markers) is "
            "a bad record under 'refuse'; 'drop' removes the images and their markers (counted in the data report)."
        ),
    )
    text_unit: Literal["paragraph", "file", "line"] = Field(
        "paragraph",
        description=(
            "Plain text files (.txt): one document per blank-line-separated block ('paragraph'), per file "
            "('file') or per line ('line')."
        ),
    )
    csv_header: Literal["auto", "yes", "no"] = Field(
        "auto",
        description=(
            "CSV/TSV files: whether the first row names the columns; 'auto' takes it as a header when every "
            "cell is a distinct, non-numeric name. Without a header the columns are named column1, column2, ..."
        ),
    )
    domain_field: str | None = Field(
        None, description="A record field (e.g. 'domain') whose value is rendered as a tag before the prompt."
    )
    domain_format: str = Field(
        "[{value}] ", description="How the domain tag is rendered; '{value}' is replaced by the field's value."
    )
    max_length: int = Field(
        512, ge=8, le=1_048_576, description="Maximum tokens per example; longer examples are truncated."
    )
    max_records: int | None = Field(
        None, ge=1, le=BIG, description="Use only the first N training records (quick trials)."
    )
    packing: bool = Field(
        False,
        description="Padding-free batches: sequences concatenated into one row with position ids restarting per sequence. Causal LMs only.",
    )
    train_on_prompt: bool = Field(
        False, description="Compute the loss on prompt tokens too, not only on the responses."
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="'error' stops before training and lists every bad record; 'skip' drops them and reports the count.",
    )
    image_root: PathStr | None = Field(
        None, description="Folder that relative image paths are resolved against (default: the data file's folder)."
    )
    image_size: int = Field(448, ge=16, le=4096, description="Images are resized to image_size x image_size pixels.")
    shuffle: bool = Field(True, description="Shuffle training examples each epoch (seeded).")
