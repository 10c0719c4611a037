"""The one shape every causal record is normalised into, and the errors of normalisation.

A `Conversation` holds chat messages ``{"role": system|user|assistant|tool, "content": str}`` that
may also carry:
- ``reasoning``: the assistant's reasoning (rendered by runner.data.causal as the template expects);
- ``loss_weight``: 0 or 1, given by the record, overriding the default mask of the message;
- ``tool_calls`` / ``tool_call_id`` / ``name``: OpenAI tool-calling fields.

A plain-text record is one or more messages of role `TEXT_ROLE` (several: segments, each with its
``loss_weight``), tokenised without a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.data.report import DataError

TEXT_ROLE = "text"  # marker role: the record is plain text, not a conversation
ROLES = ("system", "user", "assistant", "tool")
# keys of a normalised message that the runner reads and the chat template must not see
INTERNAL_KEYS = ("reasoning", "loss_weight")


class RecordError(DataError):
    """A record that cannot be normalised; the message is the reason, without location."""


class FieldsError(DataError, ValueError):
    """A format name or a field mapping that does not fit the data (a setting, not a record)."""


@dataclass(frozen=True)
class RecordOptions:
    """How records are read beyond their fields: data.images, and data.roles (extra role name ->
    role)."""

    images: str = "refuse"
    roles: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, images: str = "refuse", roles: dict[str, list[str]] | None = None) -> RecordOptions:
        pairs = tuple((name, role) for role, names in (roles or {}).items() for name in names)
        return cls(images, pairs)


@dataclass(frozen=True)
class Conversation:
    """A normalised record: chat messages (or TEXT_ROLE messages) and optional tools.

    `special_tokens`: plain text gets the tokenizer's own BOS and an EOS (False for segments,
    whose text says everything, as Axolotl's input_output). `media_dropped`: images (and other
    media) removed under data.images = "drop".
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    special_tokens: bool = True
    media_dropped: int = 0

    @property
    def is_text(self) -> bool:
        return all(m["role"] == TEXT_ROLE for m in self.messages)
