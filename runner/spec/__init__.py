"""Job specs: TOML file -> validated, typed JobSpec (the schema is generated from runner.spec.model)."""

from runner.spec.errors import JobSpecError, SpecIssue
from runner.spec.loader import LoadedJob, find_job_files, load_job, parse_job, read_toml
from runner.spec.model import JobSpec

__all__ = ["JobSpec", "JobSpecError", "LoadedJob", "SpecIssue", "find_job_files", "load_job", "parse_job", "read_toml"]
