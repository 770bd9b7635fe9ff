"""Which failures the flows retry: infrastructure (a lost Ray worker, actor, node or object, a connection or
timeout, another OS error), never a bad config, a missing input or bad data, judged along the cause chain."""

from __future__ import annotations

import builtins
import re

from pipelines.config import ConfigError

_DATA_ERRORS = (ConfigError, ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, PermissionError,
                NotADirectoryError, IsADirectoryError)
"""Failures of the input or the settings: retrying cannot help, wherever in a cause chain they appear."""
_RAY_WRAPPERS = {"RayTaskError", "UserCodeException", "RayDataUserCodeException", "TrainingFailedError",
                 "WorkerGroupError"}  # fmt: skip
"""Ray exceptions that only carry another failure (user code in a task, a training worker's error): classified by
what they carry. Every other exception from Ray (a lost worker, actor, node or object, the raylet, out of memory)
is infrastructure."""


_USER_CODE = {"UserCodeException", "RayDataUserCodeException"}
"""Ray Data's report that a map function raised: the function's own exception does not cross the process boundary
(only its traceback text does, :func:`remote_types`)."""
_NOISE = {"ObjectRefStreamEndOfStreamError"}
"""Ray exceptions that appear as the context of another while a stream ends: never the failure itself."""
_TYPE_LINE = re.compile(r"(?m)^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception))(?::|$)")


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether a failure is worth a retry, decided along its cause chain (:func:`cause_chain`: Ray's ``cause``,
    ``__cause__``, ``__context__``) and the exception types a Ray task's traceback names (:func:`remote_types`):
    a bad config, a missing input or a data error anywhere is not (it would fail the same way again); nor is a map
    function that raised anything but a connection or timeout error; otherwise a Ray system error (a lost worker,
    actor, node or object), a connection or timeout error or another OS error is. A chain with neither (a bug in
    our code, a failed remote job's message) fails at once."""
    chain = cause_chain(exc)
    remote = [t for link in chain for t in remote_types(link)]
    if any(isinstance(link, _DATA_ERRORS) for link in chain) or any(issubclass(t, _DATA_ERRORS) for t in remote):
        return False
    if any(type(link).__module__.split(".")[0] == "ray" and not (_RAY_WRAPPERS | _NOISE) & _names(link)
           for link in chain):  # fmt: skip
        return True  # a Ray system error: a lost worker, actor, node or object
    if any(_USER_CODE & _names(link) for link in chain):
        return any(issubclass(t, ConnectionError | TimeoutError) for t in remote)
    return any(isinstance(link, ConnectionError | TimeoutError | OSError) for link in chain) or \
        any(issubclass(t, ConnectionError | TimeoutError) for t in remote)  # fmt: skip


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def remote_types(exc: BaseException) -> list[type]:
    """The built-in exception classes (and :class:`pipelines.config.ConfigError`) that the traceback text of a Ray
    task's error names (``KeyError: 'latents'``): what a worker raised, when only its text crossed over."""
    if "RayTaskError" not in _names(exc):
        return []
    known = {"ConfigError": ConfigError}
    found = []
    for name in _TYPE_LINE.findall(str(exc)):
        cls = known.get(name) or getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return found


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
