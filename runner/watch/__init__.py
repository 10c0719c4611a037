"""`runner watch`: a daemon that runs the job files of a folder through an executor.

scan (folder -> spec versions) and queue (ordering, dependencies) are pure; intake turns settled
versions into runs; supervise starts, follows, stops and records their attempts through an
executor (runner.executors: local child processes; runner.slurm: sbatch jobs), chosen in
executors; recover takes over what a previous daemon left; wakeup is what wakes the loop; store
keeps the daemon's own files; daemon is the loop; commands are the CLI's `watch`, `status`,
`cancel` and `logs`.
"""
