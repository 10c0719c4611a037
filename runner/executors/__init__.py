"""Executors: what runs the attempts of a run, for a supervisor that decides which runs go when.

`base.Executor` is the interface the daemon (`runner.watch`) drives -- start, poll, stop, adopt
after a restart -- and `base.Attempt` one attempt it follows. `local` runs each attempt as a child
process of the supervisor (`child`: the process that runs one job); `runner.slurm.executor`
submits each attempt as a Slurm job. How an attempt's end becomes a state lives below both
(`runner.outputs.attempts`), so every executor classifies ends the same way.
"""
