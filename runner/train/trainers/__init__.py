"""The seam between the runner and transformers' Trainer (the engine of every recipe).

- `base`: `RunTrainer`, what every run needs (reporting, complete-or-absent checkpoints, RNG
  state, stopping on request) and the only module that overrides private Trainer methods, each
  listed in its docstring and guarded by tests/train/test_trainer_seam.py;
- one module per model kind with its subclass, which changes what that kind needs through the
  Trainer's public methods only: `causal` (`CausalTrainer`), `embedding` (`EmbeddingTrainer`).

A new kind of training (say, preference tuning) is one more subclass module here plus one more
recipe (runner.train.recipes); every setting of a trainer comes in through its constructor.
"""
