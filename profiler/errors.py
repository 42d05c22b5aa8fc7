"""Typed errors raised by library code; only ``profiler.cli.main`` turns them into exit codes."""


class ProfilerError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(ProfilerError):
    """Bad options or input (unknown preset, steps <= 0, unwritable output, ...)."""


class RunDirError(ProfilerError):
    """A run directory is missing, corrupt, or already exists without --overwrite."""


class NotComparableError(ProfilerError):
    """Two runs differ in preset, device or lattice and --force was not given."""


class RegressionError(ProfilerError):
    """A gated metric regressed beyond the threshold (report --fail-on-regression)."""

    exit_code = 1


class InterruptedRun(ProfilerError):
    """The profile was interrupted by SIGINT / SIGTERM; the run directory says so."""

    exit_code = 130


class DiskFullError(ProfilerError):
    """A write found no space left (ENOSPC / EDQUOT); ``path`` is the file being written."""

    def __init__(self, path: str, detail: str = "") -> None:
        super().__init__(f"no space left on {path}" + (f" ({detail})" if detail else ""))
        self.path = path

