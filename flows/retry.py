"""Which failures the flows retry: infrastructure (a lost Ray worker, actor, node or object, a connection or
timeout, another OS error), never a bad config, a missing input or bad data, judged along the cause chain."""

from __future__ import annotations

from pipelines.config import ConfigError

_DATA_ERRORS = (ConfigError, ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, PermissionError,
                NotADirectoryError, IsADirectoryError)
"""Failures of the input or the settings: retrying cannot help, wherever in a cause chain they appear."""
_RAY_WRAPPERS = {"RayTaskError", "UserCodeException", "RayDataUserCodeException", "TrainingFailedError",
                 "WorkerGroupError"}  # fmt: skip
"""Ray exceptions that only carry another failure (user code in a task, a training worker's error): classified by
what they carry. Every other exception from Ray (a lost worker, actor, node or object, the raylet, out of memory)
is infrastructure."""


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether a failure is worth a retry, decided along its cause chain (:func:`cause_chain`: Ray's ``cause``,
    ``__cause__``, ``__context__``): a bad config, a missing input or a data error anywhere in it is not (it would
    fail the same way again); otherwise a Ray system error (a lost worker, actor, node or object), a connection or
    timeout error or another OS error is. A chain with neither (a bug in our code, a failed remote job's message)
    fails at once."""
    chain = cause_chain(exc)
    if any(isinstance(link, _DATA_ERRORS) for link in chain):
        return False
    for link in chain:
        from_ray = type(link).__module__.split(".")[0] == "ray"
        if from_ray and not _RAY_WRAPPERS & {c.__name__ for c in type(link).__mro__}:
            return True
        if isinstance(link, ConnectionError | TimeoutError | OSError):
            return True
    return False


def cause_chain(exc: BaseException, limit: int = 32) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first: Ray's ``cause`` attribute (a task's or worker's own exception),
    ``__cause__`` and ``__context__``; each once."""
    chain: list[BaseException] = []
    todo = [exc]
    while todo and len(chain) < limit:
        link = todo.pop(0)
        if link is None or any(link is seen for seen in chain):
            continue
        chain.append(link)
        nested = getattr(link, "cause", None)
        todo += [c for c in (nested, link.__cause__, link.__context__) if isinstance(c, BaseException)]
    return chain


def retry_condition(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's signature
    """Prefect's ``retry_condition_fn``: retry a failed task only on an infrastructure error."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classified, not swallowed: the task fails if this returns False
        return is_infrastructure_error(exc)
    return False
