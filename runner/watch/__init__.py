"""`runner watch`: a daemon that runs the job files of a folder, one at a time, in child processes.

scan (folder -> spec versions) and queue (ordering, dependencies) are pure; exits maps a child's
end to a state; store keeps the daemon's own files; daemon is the loop; child is the process
that runs one job; commands are the CLI's `watch`, `status`, `cancel` and `logs`.
"""
