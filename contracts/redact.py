"""Redaction of secrets from everything the platform writes down: manifests, registry records, flow artifacts, logs.

Weights, data and checkpoint storage load from local paths or URIs in config (``distill_image.train.storage_path``,
``teacher.pretrained_dir``, ...), and every job records its resolved config, inputs and paths in ``manifest.json``,
which the registry stores (as an MLflow artifact, some fields as tags) and flows publish as Prefect artifacts. A
credential written into a URI would be copied to all of them. :func:`redact` replaces it with ``***`` and leaves
the rest of the value readable:

- the password of a URI's userinfo: ``postgresql://alcm:PW@db/mlflow`` → ``postgresql://alcm:***@db/mlflow``; on an
  object store (``s3://``, ``gs://``, ``abfs://``, ...) the user is the access key and is masked too:
  ``s3://AK:SK@bucket/runs`` → ``s3://***:***@bucket/runs``;
- the value of a credential query or connection-string parameter (:data:`SECRET_PARAMS`, any case, after ``?``,
  ``&`` or ``;``): ``s3://bucket/runs?region=eu-west-1&access_key=AK&secret_key=SK`` →
  ``s3://bucket/runs?region=eu-west-1&access_key=***&secret_key=***``; Azure ``...;AccountKey=K;...``, presigned
  ``X-Amz-Signature=``, SAS ``sig=``;
- the current value of every secret environment variable (:func:`secret_env_values`: the names in
  :data:`SECRET_ENV` and any name with a ``SECRET``, ``PASSWORD``, ``TOKEN`` or ``KEY`` part, 8 characters or
  longer), wherever it appears, so a library that echoes a key is masked as well;
- in a mapping, the whole string value of a key that names a secret (``password``, ``secret_key``, ``*_token``...).

Ordinary paths, URIs without credentials, digests, config overrides of other keys and registry references
(``name@3``) are returned unchanged. An unusual URI with ``@`` in its path after a port (``https://h:8080/a@b``)
reads as userinfo and is over-masked: masking too much is the safe side.

Where it is applied: :func:`contracts.manifest.write_manifest` redacts every manifest before it is written (so the
registry, which stores what the job wrote, never receives a credential); the flows return and publish the redacted
manifest (``flows.common.run_io_job``); and :func:`install_log_redaction`, which every flow and CLI invocation runs
(``flows.common.apply_env_defaults``), redacts every log record this process creates (message and traceback), so
Prefect's run logs, the console and any log file see only the redacted text. Content digests are never computed
from redacted text: a job computes its digest from its data (and, for checkpoints, from its files and inputs)
before the manifest is written, so redaction changes no digest.

Flow parameters are not redacted: Prefect stores a flow run's parameters (the ``overrides`` list) as the user typed
them and shows them back in its UI, behind the same access control as the rest of the Prefect API (``make serve``
can require an auth string). Pass storage credentials in the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ...: pyarrow, Ray Train and MLflow read them) rather than in URIs; what the flows log and
publish about a run is redacted either way.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"

#: Query and connection-string parameters whose value is a credential (compared lower-case).
SECRET_PARAMS = frozenset({
    "access_key", "secret_key", "session_token", "access_key_id", "secret_access_key", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "token", "access_token", "refresh_token", "id_token", "auth",
    "password", "passwd", "pwd", "secret", "client_secret", "api_key", "apikey", "key", "sig", "signature",
    "credential", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
    "x-goog-credential", "accountkey", "sharedaccesskey", "sharedaccesssignature",
})  # fmt: skip

#: Environment variables that hold credentials, by name (any other name is matched by :func:`is_secret_env_name`).
SECRET_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
    "ALCM_PREFECT_AUTH_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
    "RAY_AUTH_TOKEN", "HF_TOKEN",
})  # fmt: skip

#: Object stores whose URI userinfo is ``ACCESS_KEY:SECRET_KEY`` (pyarrow's ``s3://AK:SK@bucket/...``).
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az", "wasb", "wasbs", "oss"})

#: Only values at least this long are masked by value: shorter ones (``1``, ``true``) would mask ordinary text.
MIN_SECRET_LEN = 8

_SECRET_NAME_PARTS = frozenset({"SECRET", "PASSWORD", "PASSWD", "TOKEN", "KEY"})
_NOT_SECRET_NAME_PARTS = frozenset({"FILE", "PATH", "DIR"})  # GOOGLE_..._KEY_FILE names where a key is, not the key

# userinfo with a password: scheme://user:password@ (the password may hold an unencoded "/", never whitespace,
# quotes, "@", "?" or "#").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*)://(?P<user>[^\s/?#@:'\"]*):(?P<password>[^\s?#@'\"]*)@")
_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)=(?P<value>[^&;#\s'\"<>]*)")
_SECRET_KEY_NAMES = re.compile(
    r"(?i)^(?:.*[_.\-])?(?:password|passwd|secret|secret_key|secret_access_key|access_key|access_key_id|"
    r"session_token|access_token|refresh_token|auth_token|api_key|auth_string|client_secret|token)$"
)


def is_secret_env_name(name: str) -> bool:
    """Whether the environment variable ``name`` holds a credential: a name in :data:`SECRET_ENV`, or one with a
    ``SECRET``, ``PASSWORD``, ``TOKEN`` or ``KEY`` part (``_``-separated) and no ``FILE``, ``PATH`` or ``DIR``."""
    if name in SECRET_ENV:
        return True
    parts = set(name.upper().split("_"))
    return bool(parts & _SECRET_NAME_PARTS) and not parts & _NOT_SECRET_NAME_PARTS


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values (longest first) of the secret environment variables set now, and of an auth string's password
    (``user:password``), that are at least :data:`MIN_SECRET_LEN` characters long."""
    environ = os.environ if environ is None else environ
    values = set()
    for name, value in environ.items():
        if not value or not is_secret_env_name(name):
            continue
        values.add(value)
        if name.endswith("AUTH_STRING") and ":" in value:
            values.add(value.split(":", 1)[1])
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=lambda v: (-len(v), v))


def redact_text(text: str, *, secrets: list[str] | None = None) -> str:
    """``text`` with URI passwords, credential parameters and secret environment values replaced by ``***``
    (see the module docstring); ``secrets``: the values to mask, default :func:`secret_env_values`."""
    for value in secret_env_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    if "://" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    if "=" in text:
        text = _PARAM.sub(_mask_param, text)
    return text


def _mask_userinfo(m: re.Match) -> str:
    user = MASK if m["scheme"].lower() in OBJECT_STORE_SCHEMES and m["user"] else m["user"]
    return f"{m['scheme']}://{user}:{MASK}@"


def _mask_param(m: re.Match) -> str:
    if m["name"].lower() not in SECRET_PARAMS or not m["value"] or m["value"] == MASK:
        return m[0]
    return f"{m['lead']}{m['name']}={MASK}"


def is_secret_key(name: str) -> bool:
    """Whether a mapping key names a secret value (``password``, ``secret_key``, ``mlflow_token``, ...)."""
    return bool(_SECRET_KEY_NAMES.match(name))


def redact(value: Any, *, secrets: list[str] | None = None) -> Any:
    """A copy of ``value`` (str, or dicts, lists and tuples of them, nested) with every credential replaced by
    ``***``; other values are returned as they are. A string under a key that names a secret is masked whole."""
    secrets = secret_env_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact_text(value, secrets=secrets)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = redact_text(key, secrets=secrets) if isinstance(key, str) else key
            if isinstance(key, str) and isinstance(item, str) and item and is_secret_key(key):
                out[name] = MASK
            else:
                out[name] = redact(item, secrets=secrets)
        return out
    if isinstance(value, list | tuple):
        return type(value)(redact(item, secrets=secrets) for item in value)
    if isinstance(value, os.PathLike):  # written with str(); a Path never changes unless it holds a credential
        text = os.fspath(value)
        redacted = redact_text(text, secrets=secrets) if isinstance(text, str) else text
        return value if redacted == text else redacted
    return value


# ------------------------------------------------------------------------------------------------ logs


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: its message (then stored formatted, without args) and its traceback text
    (stored as ``exc_text``, which formatters print instead of formatting the exception again). A record whose
    message cannot be formatted is left for its handler to report."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError, KeyError):  # a bad format/args pair: the handler reports it, as without this
        return record
    secrets = secret_env_values()
    redacted = redact_text(message, secrets=secrets)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        redacted = redact_text(text, secrets=secrets)
        if redacted != text:
            record.exc_text = redacted
    return record


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (:func:`redact_record`), whatever its logger and
    handlers: the record factory is wrapped, so Prefect's API handler, the console and pytest's capture all see
    the same redacted record. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True


_installed = False  # a flag, not a mark on the factory: a library (Ray) may wrap ours after it is installed
