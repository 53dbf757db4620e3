"""Errors a user can act on. Each message says what was wrong, what is allowed, what to do."""


class DistilleryError(Exception):
    """Base class: every error Distillery raises on purpose."""


class InvalidRequest(DistilleryError, ValueError):
    """A request field is missing, malformed or out of range."""


class CheckpointError(DistilleryError):
    """A checkpoint directory or its card cannot be read."""


class BackendUnavailable(DistilleryError):
    """The asked-for backend cannot run here (missing package, no GPU, …)."""
