"""Embedding models: a backbone, pooling and an optional projection, giving normalised vectors.

Three families, chosen from the model kind and the checkpoint:
- ``text`` (model.kind = "embedding"): an encoder (BERT, MiniLM, ...) with mean or CLS pooling,
  or a decoder LM with last-token pooling;
- ``dual`` (image-text, CLIP-style): separate text and image towers with their own projections
  (`get_text_features` / `get_image_features`);
- ``vlm`` (image-text, single tower, Qwen2-VL / Qwen2.5-VL as in Jina Embeddings V4): text and
  images go through the same language model; the image becomes `<|image_pad|>` tokens expanded
  to its patch count; the last hidden states are mean-pooled.

`Preprocessor` turns `Item`s (texts, image paths) into model inputs on the CPU (it runs in the
data collator); `Embedder.encode` turns those into vectors. An embedder's `forward(**sides)`
encodes several sides at once (query, positive, negative) so the Trainer's single forward call
goes through DDP. Image processors are the PIL ones: torchvision breaks the CPU torch here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.data.embedding import EmbeddingExample, Item
from runner.data.images import load_image
from runner.data.report import DataError
from runner.spec.model import JobSpec
from runner.train.model import DeviceChoice, ModelSetupError, apply_adapter, load_pretrained

PROJECTION_FILE = "projection.safetensors"
# Jina Embeddings V4's prompt around an image; "{image}" becomes vision-start, pads, vision-end
VLM_IMAGE_PROMPT = "<|im_start|>user\n{image}Describe the image.<|im_end|>\n"
_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "mpnet",
    "distilbert",
    "electra",
    "deberta",
    "deberta-v2",
    "camembert",
    "albert",
    "nomic_bert",
    "modernbert",
    "new",
    "e5",
    "xlm",
}
# text models verified to give the same vectors padding-free (tests/embedding/test_padding_free.py)
PADDING_FREE_MODEL_TYPES = frozenset({"bert", "llama", "qwen2"})
_DECODER_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass(frozen=True)
class EmbedderInfo:
    """What is needed to rebuild the embedder around saved weights (kept in runner_adapter.json)."""

    family: str  # text | dual | vlm
    pooling: str  # mean | cls | last-token | tower (dual: each tower's own pooled, projected output)
    dim: int
    hidden_size: int
    projection_dim: int | None
    max_length: int
    image_size: int
    tasks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedderInfo:
        return cls(**{**data, "tasks": tuple(data.get("tasks", ()))})


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, L, H] hidden states -> [B, H] by mean over real tokens, the first token, or the last real token."""
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    if how == "last-token":  # right or left padding: the highest position with mask 1
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}")


def pool_packed(hidden: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    """[T, H] hidden states of texts laid end to end ([N] lengths) -> [N, H], as `pool` does for
    the same texts padded: mean over each text's tokens, its first token, or its last token."""
    ends = torch.cumsum(lengths, 0)
    if how == "mean":
        segment = torch.repeat_interleave(
            torch.arange(lengths.shape[0], device=hidden.device), lengths, output_size=hidden.shape[0]
        )
        sums = hidden.new_zeros(lengths.shape[0], hidden.shape[-1]).index_add(0, segment, hidden)
        return sums / lengths.unsqueeze(-1).to(hidden.dtype).clamp(min=1e-9)
    if how == "cls":
        return hidden[ends - lengths]
    if how == "last-token":
        return hidden[ends - 1]
    raise ValueError(f"unknown pooling {how!r}")


class Embedder(nn.Module):
    accepts_loss_kwargs = False  # tells the Trainer the loss is a per-batch mean (no token counting)

    def __init__(self, backbone: nn.Module, info: EmbedderInfo) -> None:
        super().__init__()
        self.backbone: Any = backbone  # a transformers or peft model: its API is wider than nn.Module's
        self.info = info
        self.projection = nn.Linear(info.hidden_size, info.projection_dim) if info.projection_dim else None
        self._task_params: list[nn.Parameter] = []
        if info.tasks:  # peft's set_adapter freezes the inactive adapters; keep them all in the optimizer
            self._task_params = [p for name, p in backbone.named_parameters() if "lora_" in name]

    @property
    def dim(self) -> int:
        return self.info.dim

    def forward(self, **sides: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if len(sides) > 1 and all(_packed_text_only(f) for f in sides.values()):
            return self._encode_sides_together(sides)
        return {name: self.encode(features) for name, features in sides.items()}

    def _encode_sides_together(self, sides: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Padding-free text sides (query, positive, negative) through the backbone as one row:
        attention stays within each text, so every text's vector is what it would be alone; one
        backbone call instead of one per side (fewer, larger matrix products)."""
        texts = [f["text"] for f in sides.values()]
        joined = {key: torch.cat([t[key] for t in texts], dim=-1 if key != "lengths" else 0) for key in texts[0]}
        vectors = self._embed(joined, "text")
        if self.projection is not None:
            vectors = self.projection(vectors)
        vectors = F.normalize(vectors, dim=-1)
        return dict(zip(sides, torch.split(vectors, [int(t["lengths"].shape[0]) for t in texts]), strict=True))

    def encode(self, features: Mapping[str, Any]) -> torch.Tensor:
        """Preprocessor output -> [N, dim] unit vectors, in the order of the items."""
        pieces, positions = [], []
        for modality in ("text", "image"):
            if features.get(modality) is not None:
                pieces.append(self._embed(features[modality], modality))
                positions.append(features[f"{modality}_pos"])
        embeddings = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if len(pieces) > 1:  # mixed texts and images: back to the items' order
            embeddings = embeddings[torch.argsort(torch.cat(positions))]
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        return F.normalize(embeddings, dim=-1)

    def _embed(self, inputs: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
        if self.info.family == "dual":
            if modality == "text":
                out = self.backbone.get_text_features(**inputs)
            else:
                out = self.backbone.get_image_features(pixel_values=inputs["pixel_values"])
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        if "lengths" in inputs:  # padding-free: texts end to end in one row, positions restart per text
            hidden = self.backbone(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"]).last_hidden_state
            return pool_packed(hidden[0], inputs["lengths"], self.info.pooling)
        hidden = self.backbone(**inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"], self.info.pooling)

    def set_task(self, task: str) -> None:
        """Route the next forward through `task`'s LoRA adapter (multi-task)."""
        if task not in self.info.tasks:
            raise KeyError(f"no adapter for task {task!r}; tasks: {', '.join(self.info.tasks)}")
        if self.backbone.active_adapter != task:
            self.backbone.set_adapter(task)
            for param in self._task_params:
                param.requires_grad_(True)

    # --- the Trainer's hooks --------------------------------------------------------------

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        model = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained weight (LoRA adapters and projection, or everything for full fine-tuning)."""
        trainable = {id(p) for p in self._task_params} | {id(p) for p in self.parameters() if p.requires_grad}
        return {name: p.detach().contiguous().clone() for name, p in self.named_parameters() if id(p) in trainable}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        self.load_state_dict(dict(state), strict=False)

    def save_pretrained(self, folder: Path) -> None:
        """The adapter(s) (peft format; one subfolder per task) or full model, plus the projection."""
        from safetensors.torch import save_file

        self.backbone.save_pretrained(str(folder), safe_serialization=True)
        if self.projection is not None:
            save_file(
                {k: v.contiguous() for k, v in self.projection.state_dict().items()}, str(folder / PROJECTION_FILE)
            )


# ---------------------------------------------------------------------------------------
# inputs


class Preprocessor:
    """Items -> model inputs for one family: tokenised texts and processed images, each with the
    positions of its items in the list (texts and images may be mixed within a side)."""

    def __init__(
        self,
        info: EmbedderInfo,
        tokenizer: Any,
        image_processor: Any = None,
        config: Any = None,
        *,
        padding_free: bool = False,
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.padding_free = padding_free and info.family == "text"
        self._image_tokens: tuple[str, str, str] | None = None
        if info.family == "vlm":
            ids = (config.vision_start_token_id, config.image_token_id, config.vision_end_token_id)
            start, pad, end = tokenizer.convert_ids_to_tokens(list(ids))
            self._image_tokens = (start, pad, end)
            self._image_token_id = config.image_token_id
            self._merge = int(getattr(image_processor, "merge_size", 2))

    def __call__(self, items: Sequence[Item]) -> dict[str, Any]:
        texts = [(i, item.text) for i, item in enumerate(items) if item.image is None]
        images = [(i, item.image) for i, item in enumerate(items) if item.image is not None]
        out: dict[str, Any] = {}
        if texts:
            out["text"] = self._texts([t for _, t in texts])
            out["text_pos"] = torch.tensor([i for i, _ in texts])
        if images:
            if self.info.family == "text":
                raise DataError('this model reads text only: use model.kind = "image-text-embedding" for images')
            out["image"] = self._images([load_image(p, self.info.image_size) for _, p in images])
            out["image_pos"] = torch.tensor([i for i, _ in images])
        return out

    def _texts(self, texts: list[str | None]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            return self._texts_padding_free(texts)
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.info.max_length, return_tensors="pt"
        )
        keep = ("input_ids", "attention_mask") if self.info.family != "text" else tuple(encoded.keys())
        return {k: encoded[k] for k in keep}

    def _texts_padding_free(self, texts: list[str | None]) -> dict[str, torch.Tensor]:
        """The texts end to end in one row (no padding), position ids restarting at 0 for each,
        and their lengths: the model attends within each text only (runner.train.attention)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.info.max_length)["input_ids"]
        lengths = torch.tensor([len(i) for i in ids])
        return {
            "input_ids": torch.tensor([[t for i in ids for t in i]]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
            "lengths": lengths,
        }

    def _images(self, images: list[Any]) -> dict[str, torch.Tensor]:
        processed = self.image_processor(images=images, return_tensors="pt")
        if self.info.family == "dual":
            return {"pixel_values": processed["pixel_values"]}
        assert self._image_tokens is not None
        start, pad, end = self._image_tokens
        grid = processed["image_grid_thw"]
        counts = (grid.prod(dim=-1) // (self._merge**2)).tolist()
        prompts = [VLM_IMAGE_PROMPT.format(image=start + pad * int(n) + end) for n in counts]
        # never truncated: every image pad token must stay, or the model cannot place the image
        encoded = self.tokenizer(prompts, padding=True, return_tensors="pt")
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": (encoded["input_ids"] == self._image_token_id).int(),
            "pixel_values": processed["pixel_values"],
            "image_grid_thw": grid,
        }

    def save_pretrained(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))
        if self.image_processor is not None:
            self.image_processor.save_pretrained(str(folder))


def _packed_text_only(features: Mapping[str, Any]) -> bool:
    text = features.get("text")
    return features.get("image") is None and text is not None and "lengths" in text


class EmbeddingCollator:
    """Examples -> {query, positive[, negative]: inputs, [scores], [task]} for `Embedder.forward`."""

    def __init__(self, preprocess: Preprocessor) -> None:
        self.preprocess = preprocess

    def __call__(self, examples: Sequence[EmbeddingExample]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "query": self.preprocess([e.query for e in examples]),
            "positive": self.preprocess([e.positive for e in examples]),
        }
        negatives = [n for e in examples for n in e.negatives]
        if negatives:
            batch["negative"] = self.preprocess(negatives)
        if examples[0].score is not None:
            batch["scores"] = torch.tensor([e.score for e in examples], dtype=torch.float32)
        tasks = {e.task for e in examples}
        if tasks != {None}:
            if len(tasks) > 1:
                raise ValueError(f"a batch must hold one task, found {sorted(map(str, tasks))}")
            batch["task"] = tasks.pop()
        return batch


# ---------------------------------------------------------------------------------------
# loading


def _family(kind: str, model: Any) -> str:
    if kind == "embedding":
        return "text"
    if hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):
        return "dual"
    config = model.config
    if getattr(config, "vision_config", None) is not None and getattr(config, "image_token_id", None) is not None:
        return "vlm"
    raise ModelSetupError(
        f"model type '{config.model_type}' is not a supported image-text embedder: use a CLIP-style dual "
        "encoder (get_text_features/get_image_features) or a Qwen2-VL-family single-tower model"
    )


def default_pooling(config: Any) -> str:
    """'mean' for encoders, 'last-token' for decoder LMs (from the checkpoint's architecture)."""
    if config.model_type in _ENCODER_TYPES:
        return "mean"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(_DECODER_ARCHITECTURE_SUFFIXES) for a in architectures) or getattr(config, "is_decoder", False):
        return "last-token"
    return "mean"


def _hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    size = getattr(config, "hidden_size", None) or getattr(text, "hidden_size", None)
    if size is None:
        raise ModelSetupError(f"cannot tell the hidden size of model type '{config.model_type}'")
    return int(size)


def _image_processor(path: Path) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(path), backend="pil")
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"cannot load the image processor of {path} (preprocessor_config.json): {exc}") from exc


def _load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    from runner.train.common import load_tokenizer

    try:
        return load_tokenizer(path, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"cannot load the tokenizer of {path}: {exc}") from exc


def _without_unused_parts(model: Any) -> Any:
    """Drop what the embedding never uses, so no weight sits idle (DDP insists every trained weight gets a gradient)."""
    if getattr(model, "pooler", None) is not None:  # BERT's pooler: our pooling works on the hidden states
        model.pooler = None
    if hasattr(model, "logit_scale"):  # CLIP's temperature: the loss has its own
        model.logit_scale.requires_grad_(False)
    return model


def _backbone(path: Path, spec: JobSpec, choice: DeviceChoice) -> Any:
    from transformers import AutoModel

    return _without_unused_parts(
        load_pretrained(AutoModel, path, spec.model, spec.adapter, choice, what="an embedding model")
    )


def build_embedder(path: Path, spec: JobSpec, choice: DeviceChoice) -> tuple[Embedder, Preprocessor]:
    """The job's embedder (base model + adapter(s) + projection) and its input preprocessor."""
    tasks = tuple(spec.loss.tasks) if spec.loss_type == "multi-task" else ()
    model = _backbone(path, spec, choice)
    family = _family(spec.model.kind, model)
    hidden = _hidden_size(model.config)
    if family == "dual":
        pooling = "tower"
        hidden = int(getattr(model.config, "projection_dim", hidden))
    elif spec.model.pooling != "auto":
        pooling = spec.model.pooling
    else:  # a VLM tower is a decoder, but Jina V4 mean-pools it
        pooling = "mean" if family == "vlm" else default_pooling(model.config)
    info = EmbedderInfo(
        family=family,
        pooling=pooling,
        dim=spec.model.projection_dim or hidden,
        hidden_size=hidden,
        projection_dim=spec.model.projection_dim,
        max_length=spec.data.max_length,
        image_size=spec.data.image_size,
        tasks=tasks,
    )
    padding_free = spec.train.speed.padding_free_embeddings and padding_free_capable(model, family)
    if padding_free:
        from runner.train.attention import use_packed_sdpa

        padding_free = use_packed_sdpa(model)
    backbone = apply_adapter(
        model,
        spec.adapter,
        gradient_checkpointing=spec.train.gradient_checkpointing,
        task_type="FEATURE_EXTRACTION",
        adapter_names=tasks or ("default",),
    )
    tokenizer = _load_tokenizer(path, spec.model.trust_remote_code)
    image_processor = _image_processor(path) if family != "text" else None
    embedder = Embedder(backbone, info).to(choice.device)
    return embedder, Preprocessor(info, tokenizer, image_processor, model.config, padding_free=padding_free)


def padding_free_capable(model: Any, family: str) -> bool:
    """Whether a text embedder can take padding-free rows: a model whose attention goes through
    transformers' attention interface with SDPA (so it can attend per text, runner.train.attention)
    and whose positions come from the position ids given (BERT's absolute positions, Llama/Qwen2's
    rotary ones). RoBERTa-style models count positions from the padding index and stay padded."""
    config = model.config
    return (
        family == "text"
        and config.model_type in PADDING_FREE_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) == "sdpa"
    )


def load_trained_embedder(adapter_dir: Path, base_path: Path) -> tuple[Embedder, Preprocessor]:
    """A finished run's embedder for inference: base model + saved adapter(s) + projection."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    saved = json.loads((adapter_dir / "runner_adapter.json").read_text(encoding="utf-8"))
    info = EmbedderInfo.from_dict(saved["embedder"])
    if saved["method"] == "full":
        backbone = _without_unused_parts(AutoModel.from_pretrained(str(adapter_dir)))
    else:
        from peft import PeftModel

        base = _without_unused_parts(AutoModel.from_pretrained(str(base_path)))
        first, *others = info.tasks or ("default",)
        backbone = PeftModel.from_pretrained(
            base, str(adapter_dir / first if info.tasks else adapter_dir), adapter_name=first
        )
        for task in others:
            backbone.load_adapter(str(adapter_dir / task), adapter_name=task)
    embedder = Embedder(backbone, info)
    if embedder.projection is not None:
        embedder.projection.load_state_dict(load_file(str(adapter_dir / PROJECTION_FILE)))
    tokenizer = _load_tokenizer(adapter_dir, False)
    image_processor = _image_processor(adapter_dir) if info.family != "text" else None
    return embedder.eval(), Preprocessor(info, tokenizer, image_processor, backbone.config)
