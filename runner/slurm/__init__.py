"""Running jobs on a Slurm cluster: each run attempt is one `sbatch` of `runner run` on the allocation.

The cluster's scheduler decides where and when; the runner only submits, follows and records:

* `sbatch`    -- [resources] -> sbatch options, and the batch script (pure: `runner.slurm.sbatch`);
* `states`    -- Slurm job states and exit codes -> our states, and the parsing of squeue / scontrol /
                 sacct output (pure: `runner.slurm.states`);
* `client`    -- the thin layer that calls the Slurm commands (`runner.slurm.client`);
* `executor`  -- submit, poll, cancel, adopt: the `runner.executors.base.Executor` that
                 `runner watch --executor slurm` drives and `runner run --executor slurm` uses;
* `foreground`-- `runner run --executor slurm`: submit one run and follow it to its end;
* `node`      -- `runner run JOB --run-dir RUN` on the allocation: check it is the run's submission,
                 then run the attempt as a local child would (`runner.executors.child`).

On the node, the batch script runs `python -m runner run JOB --run-dir RUN` with the submitter's
interpreter: the same pipeline, status, metrics and checkpoint code as everywhere else. The node
process reports how the run ended (`.outcome.json`); the submitter writes the state once Slurm says
the job is over, through the one transition function. The runs folder must therefore be on a
filesystem every node sees at the same path.
"""

from __future__ import annotations

__all__: list[str] = []
