"""The typed job spec: the single source of truth for the job file's shape.

`schemas/job.schema.json` is generated from these classes (see `runner.spec.schema`) and a test
keeps the committed file identical to the generated one, so the editor-facing contract and the
loader can never drift. Every field carries a description because the schema is documentation.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

# The [data] section and the base types live in their own modules; their names stay importable from here.
from runner.spec.data_section import CANONICAL_FIELDS, CanonicalField, DataFormat, DataSection  # noqa: F401
from runner.spec.section import (  # noqa: F401
    ALIAS_PATTERN,
    BIG,
    MODULE_PATTERN,
    NAME_PATTERN,
    PATH_PATTERN,
    SOURCE_PATTERN,
    PathList,
    PathStr,
    Section,
    StrList,
)
from runner.units import SIZE_WITH_UNIT_PATTERN

ModelKind = Literal["causal-lm", "embedding", "image-text-embedding"]
LossType = Literal[
    "auto", "causal-lm", "contrastive", "matryoshka", "cosent", "multi-task", "dpo", "ipo", "orpo", "simpo", "kto"
]
PREFERENCE_LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
ReferenceKind = Literal["auto", "adapter-off", "copy", "precompute"]
BaseLossType = Literal["contrastive", "cosent"]
ReportTarget = Literal["tensorboard", "wandb", "mlflow"]


class ModelSection(Section):
    source: str = Field(
        description=(
            "Where the base model comes from: 'hf:ORG/NAME[@REVISION]' (Hugging Face Hub, cached), "
            "'local:PATH' (a folder with config and safetensors), 'gguf:PATH#FILE.gguf', "
            "'pkg:PACKAGE[/SUBPATH]' (weights shipped in an installed Python package), "
            "'registry:ALIAS' (an entry of the model registry) or 'job:NAME' (the output of "
            "another job's latest successful run)."
        ),
        pattern=SOURCE_PATTERN,
        json_schema_extra={
            "x-hint": "a source such as 'hf:org/name', 'local:path', 'pkg:package', 'registry:alias' or 'job:name'"
        },
    )
    kind: ModelKind = Field(
        "causal-lm",
        description=(
            "Model family: 'causal-lm' (instruction / chat / completion fine-tuning), 'embedding' "
            "(text encoder) or 'image-text-embedding' (CLIP-style or single-tower VLM embedder)."
        ),
    )
    pooling: Literal["auto", "mean", "cls", "last-token"] = Field(
        "auto", description="Embedding pooling; 'auto' is mean for encoders and last-token for decoder LMs."
    )
    projection_dim: int | None = Field(
        None,
        ge=1,
        le=65536,
        description=(
            "Embedding models: add a trainable linear projection from the pooled hidden state to this many "
            "dimensions (trained and saved with the adapter). Default: no projection."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype for training; 'auto' is float32 on CPU and bfloat16 on GPUs that support it."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; 'auto' picks flash_attention_2 when installed and usable, else sdpa."
    )
    trust_remote_code: bool = Field(
        False,
        description=(
            "Allow the model repository's own Python code to run. Also needs the runner to be "
            "started with --allow-remote-code."
        ),
    )


class AdapterSection(Section):
    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="'lora' trains low-rank adapters; 'qlora' does so on a 4-bit quantised base; 'full' trains every weight.",
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=65536, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: StrList = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, or 'all-linear' for every linear layer except the output head.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="QLoRA: 4-bit quantisation type.")
    double_quant: bool = Field(True, description="QLoRA: quantise the quantisation constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "QLoRA: dtype the 4-bit weights are dequantised to for each matmul; 'auto' follows "
            "resources.precision (bf16 -> bfloat16, fp16 -> float16, otherwise float32)."
        ),
    )
    allow_cpu: bool = Field(
        False,
        description=(
            "QLoRA: permit running the 4-bit base on a CPU (needs bitsandbytes >= 0.49; slow; meant "
            "for tests and small trials)."
        ),
    )


class TaskLoss(Section):
    type: BaseLossType = Field("contrastive", description="Loss of this task's batches.")
    temperature: float = Field(0.05, gt=0.0, le=10.0, description="Softmax temperature for contrastive losses.")
    symmetric: bool = Field(False, description="Contrastive: also score documents against queries.")


class LossSection(Section):
    type: LossType = Field(
        "auto",
        description=(
            "'auto' is causal-lm for causal LMs and contrastive for embedding models. "
            "'contrastive': InfoNCE with in-batch and hard negatives; 'matryoshka': a base loss "
            "summed over truncated embedding sizes; 'cosent': scored pairs; 'multi-task': one loss "
            "and one LoRA adapter per task label."
        ),
    )
    temperature: float = Field(0.05, gt=0.0, le=10.0, description="Softmax temperature for contrastive losses.")
    symmetric: bool = Field(
        False, description="Contrastive: score documents against queries as well as queries against documents."
    )
    base: BaseLossType = Field("contrastive", description="Matryoshka: the loss applied at each dimension.")
    dims: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=list, description="Matryoshka: embedding sizes, descending, e.g. [384, 256, 128, 64]."
    )
    dim_weights: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=list, description="Matryoshka: a weight per dimension (default: all 1)."
    )
    tasks: dict[Annotated[str, Field(pattern=NAME_PATTERN)], TaskLoss] = Field(
        default_factory=dict, description="Multi-task: task label -> its loss. Each task gets its own LoRA adapter."
    )
    beta: float | None = Field(
        None,
        gt=0.0,
        le=100.0,
        description=(
            "Preference losses: the strength of the preference term. DPO, IPO, KTO: how far the policy may move from the "
            "reference (lower moves further); ORPO: the weight of the odds-ratio term; SimPO: the reward scale. "
            "Default 0.1, and 2.0 for SimPO."
        ),
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description=("DPO and SimPO: the assumed share of mislabelled pairs (conservative DPO); 0 trusts every label."),
    )
    gamma: float = Field(0.5, ge=0.0, le=100.0, description="SimPO: the target reward margin.")
    sft_weight: float = Field(1.0, ge=0.0, le=100.0, description="ORPO: the weight of the SFT (chosen reply) term.")
    desirable_weight: float = Field(1.0, gt=0.0, le=100.0, description="KTO: the weight of desirable completions.")
    undesirable_weight: float = Field(1.0, gt=0.0, le=100.0, description="KTO: the weight of undesirable completions.")
    reference: ReferenceKind = Field(
        "auto",
        description=(
            "DPO, IPO, KTO: where the reference model's log-probabilities come from. 'adapter-off': the trained model "
            "with its LoRA adapter switched off (no second copy; LoRA and QLoRA); 'copy': a frozen copy of the base "
            "(full fine-tuning); 'precompute': computed once before training and cached under RUNNER_HOME (keyed by "
            "the data, the base model and the settings), so no reference pass runs while training. 'auto' is "
            "adapter-off with an adapter and precompute for full fine-tuning."
        ),
    )


# Each switch keeps the loss and the gradients of the plain path (tests check them) and is on by
# default; turning one off is a way out should it misbehave with some model, and how
# bench/throughput.py measures its effect. A new switch is a field here, its use where the run
# reads `spec.train.speed`, and an ablation variant in bench/throughput.py.
class SpeedSection(Section):
    """Switches that change how fast a run trains, never what it learns; all on by default."""

    packed_attention: bool = Field(
        True,
        description=(
            "Causal LMs with data.packing: attention runs per sequence (variable-length SDPA) instead of over a "
            "block-diagonal mask of the whole packed row."
        ),
    )
    loss_positions_only: bool = Field(
        True,
        description=(
            "Causal LMs: the LM head is applied only at the positions whose next token counts in the loss (the "
            "responses), not over the whole sequence."
        ),
    )
    token_budget: int = Field(
        1024,
        ge=0,
        description=(
            "Causal LMs with data.packing and without train.gradient_checkpointing: a packed batch is forwarded and "
            "backpropagated in parts of at most this many tokens (cut between sequences, never inside one), so peak "
            "memory follows the budget instead of the batch. 0 forwards the whole batch at once."
        ),
    )
    shared_prompt: bool = Field(
        True,
        description=(
            "Preference losses: a pair's prompt is computed once for both replies (the rejected reply attends to the "
            "prompt's keys and values) instead of once per reply. Needs SDPA attention; other kernels compute it twice."
        ),
    )
    data_cache: bool = Field(
        True,
        description=(
            "Causal LMs: reuse the tokenised data from the cache under RUNNER_HOME/data-cache/ when the data files, "
            "the tokenizer and the data settings are unchanged."
        ),
    )
    lora_fold: bool = Field(
        True,
        description=(
            "LoRA with adapter.dropout = 0 (not QLoRA): each adapted layer's forward pass is one matrix product with "
            "the adapter folded into the frozen weight (W + scale * B A, formed once per optimizer step); the "
            "adapter's gradients still come from the low-rank path. Holds one extra copy of every adapted weight."
        ),
    )
    fused_optimizer: bool = Field(
        True,
        description=(
            "train.optimizer = 'adamw_torch' runs as torch's fused AdamW (one kernel over all trainable tensors "
            "instead of a loop of small operations per tensor), on the CPU and on CUDA."
        ),
    )
    padding_free_embeddings: bool = Field(
        True,
        description=(
            "Text embedding models (BERT-family encoders, Llama/Qwen2-family decoders): each batch's texts go through "
            "the model end to end in one row without padding, attention within each text (an encoder's texts grouped "
            "by length, padded only inside attention), instead of padded to the longest text of the batch."
        ),
    )


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0.0, le=1000.0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, le=BIG, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per device per step.")
    grad_accum: int = Field(1, ge=1, le=65536, description="Micro-batches accumulated per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of steps spent warming up the learning rate."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 disables clipping).")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = Field(
        "adamw_torch", description="Optimizer."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for weights of new layers, data order and dropout.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    log_every: int = Field(10, ge=1, le=BIG, description="Log metrics every N optimizer steps.")
    save_every: int = Field(100, ge=1, le=BIG, description="Write a checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="Keep the newest N checkpoints.")
    speed: SpeedSection = Field(
        default_factory=SpeedSection,
        description="Speed switches: how fast the run trains, not what it learns (all on by default).",
    )


class EvalSection(Section):
    every: int | None = Field(
        None, ge=1, le=BIG, description="Evaluate every N optimizer steps (needs data.eval or data.eval_fraction)."
    )
    at_start: bool = Field(True, description="Evaluate before training, as a baseline (when eval data exists).")
    at_end: bool = Field(True, description="Evaluate after training (when eval data exists).")
    batch_size: int | None = Field(None, ge=1, le=65536, description="Eval batch size (default: train.batch_size).")
    max_records: int | None = Field(None, ge=1, le=BIG, description="Evaluate on at most N records.")
    recall_at: list[Annotated[int, Field(ge=1, le=BIG)]] = Field(
        default_factory=lambda: [1, 5, 10], description="Embedding retrieval: the k values of recall@k."
    )


SLURM_TIME_PATTERN = r"^([0-9]+|[0-9]+:[0-9]{2}|[0-9]+:[0-9]{2}:[0-9]{2}|[0-9]+-[0-9]+(:[0-9]{2}){0,2})$"
MEMORY_PATTERN = SIZE_WITH_UNIT_PATTERN  # a unit is required: a bare number would be megabytes to sbatch


def _minutes_as_text(value: object) -> object:
    """`time_limit = 90` (minutes) and `time_limit = "1:30:00"` mean what they mean to sbatch."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SlurmSection(Section):
    partition: str | None = Field(
        None, min_length=1, description="sbatch --partition: the partition (queue) to submit to."
    )
    account: str | None = Field(None, min_length=1, description="sbatch --account: the account charged for the job.")
    options: list[Annotated[str, Field(pattern=r"^-")]] = Field(
        default_factory=list,
        description=(
            'More sbatch options, passed through as written, e.g. ["--qos=high", "--constraint=a100"]. '
            "Options the runner sets from the other resources keys (nodes, time, memory, output, ...) are refused."
        ),
    )


class ResourcesSection(Section):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; 'auto' uses a GPU when one is present."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision; 'auto' is fp32 on CPU and bf16 where the GPU supports it."
    )
    nproc: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Processes per machine (node); above 1, or with nodes above 1, the job is launched with torchrun "
            "(gloo on the CPU, nccl on GPUs, one GPU per process). train.batch_size is per process."
        ),
    )
    nodes: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Machines per job, on a Slurm cluster (`--executor slurm`; sbatch --nodes): nproc processes on each, "
            "with the torchrun rendezvous on the first node. Above 1 needs --executor slurm."
        ),
    )
    gpus_per_node: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Slurm: GPUs to allocate on each node (sbatch --gpus-per-node); default nproc when device = 'cuda', else none.",
    )
    cpus_per_node: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Slurm: CPU cores to allocate on each node (sbatch --cpus-per-task, one task per node); default nproc x threads.",
    )
    memory: str | None = Field(
        None,
        pattern=MEMORY_PATTERN,
        description=(
            "Slurm: memory to allocate on each node (sbatch --mem), e.g. '64G', '500M', '16GiB'. "
            "GB and MB are powers of 1000 (16GB = 16 x 10^9 bytes); GiB, MiB and the bare G and M "
            "powers of 1024 (16GiB = 16G = 16 x 2^30 bytes), as everywhere in the runner."
        ),
        json_schema_extra={"x-hint": "a size with its unit, such as '64G', '500M', '16GiB' or '16GB'"},
    )
    time_limit: Annotated[str | None, BeforeValidator(_minutes_as_text)] = Field(
        None,
        pattern=SLURM_TIME_PATTERN,
        description=(
            "Slurm: wall-clock limit of each attempt (sbatch --time): minutes as a number, or 'MM:SS', 'HH:MM:SS', "
            "'D-HH', 'D-HH:MM', 'D-HH:MM:SS'. A run that reaches it saves a checkpoint, is interrupted and "
            "resumes from that checkpoint on a new allocation."
        ),
        json_schema_extra={
            "type": ["string", "integer"],
            "minimum": 1,
            "maximum": 10_000_000,
            "x-hint": "minutes as a number, or a Slurm time such as '2:00:00' or '1-12:00:00'",
        },
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "Multi-process strategy: 'ddp' keeps a full replica in every process; 'fsdp' shards "
            "parameters, gradients and optimizer state across processes (CUDA only: on the CPU it "
            "is refused, since the Trainer would silently run DDP)."
        ),
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="CPU threads per process (default: the cores available)."
    )
    slurm: SlurmSection = Field(
        default_factory=SlurmSection, description="Slurm only: partition, account and more sbatch options."
    )

    @property
    def world_size(self) -> int:
        """All training processes of the job: nproc on each of `nodes` machines (> 1: torchrun)."""
        return self.nproc * self.nodes


class OutputSection(Section):
    register_as: str | None = Field(
        None,
        pattern=ALIAS_PATTERN,
        description="Register the result in the model registry under this alias (lowercase letters, digits, '.', '_', '-').",
        json_schema_extra={
            "x-hint": "a registry alias: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        },
    )
    merge: bool = Field(False, description="Also write the adapter merged into the base weights.")


class TrackingSection(Section):
    report_to: list[ReportTarget] = Field(
        default_factory=list,
        description="Experiment trackers besides the run's own metrics.jsonl; wandb runs in offline mode.",
    )
    project: str | None = Field(None, description="Tracker project name (default: the job name).")


class JobSpec(Section):
    """A fine-tuning job: one TOML file in jobs/."""

    name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Job name; defaults to the file name without .toml. Runs are stored under runs/<name>/.",
        json_schema_extra={"x-hint": "a name of letters, digits, '.', '_' or '-' (at most 64)"},
    )
    description: str = Field("", description="Free text shown in listings.")
    priority: int = Field(
        0, ge=-1000, le=1000, description="Queue order: higher runs first; ties run in the order seen."
    )
    model: ModelSection = Field(description="The base model.")
    data: DataSection = Field(description="Training and evaluation data.")
    adapter: AdapterSection = Field(
        default_factory=AdapterSection, description="What is trained: LoRA, QLoRA or all weights."
    )
    loss: LossSection = Field(default_factory=LossSection, description="The training objective.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimisation settings.")
    eval: EvalSection = Field(default_factory=EvalSection, description="When and how to evaluate.")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="Devices and processes.")
    output: OutputSection = Field(default_factory=OutputSection, description="What happens to the result.")
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="Experiment tracking.")

    @property
    def loss_type(self) -> str:
        """The effective loss after resolving 'auto' against the model kind."""
        if self.loss.type != "auto":
            return self.loss.type
        return "causal-lm" if self.model.kind == "causal-lm" else "contrastive"

    @property
    def preference_beta(self) -> float:
        """loss.beta, or the default of the job's preference loss (2.0 for SimPO, else 0.1)."""
        if self.loss.beta is not None:
            return self.loss.beta
        return 2.0 if self.loss_type == "simpo" else 0.1

    @property
    def reference(self) -> str | None:
        """Where the reference log-probabilities come from ('auto' resolved), or None for a loss
        without a reference model (ORPO, SimPO) or a job that is not preference tuning."""
        if self.loss_type not in PREFERENCE_LOSSES or self.loss_type in REFERENCE_FREE_LOSSES:
            return None
        if self.loss.reference != "auto":
            return self.loss.reference
        return "precompute" if self.adapter.method == "full" else "adapter-off"
