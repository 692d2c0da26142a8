"""A service from the seed's ``$.Service.create`` body, and a request's inputs.

The body is ``name`` (the display title), ``type`` and ``subtype`` (kept as they are),
one of ``pipeline`` | ``stream`` | ``batch`` | ``validation`` (``validation`` rules may
also sit beside ``pipeline`` or ``batch``, as in a spec file), and optionally
``connections``, ``schedule``, ``pricing``, ``alerts``, ``runtime``, ``description``
and ``customerId`` (who the scheduled runs are charged to). The spec stored is the
body without the title, type, subtype and customer, named for the service's pipeline
(:func:`pipeline_name`); ``type``, ``subtype`` and ``baseDir`` (the folder its relative
paths are read from) go under its ``metadata``.

Guarantees: no literal secret is ever accepted (:func:`literal_secrets`), so none can
reach an event; a spec string may hold ``${inputs.NAME}``, which :func:`apply_inputs`
fills from a request's inputs (strings or numbers, never a secret nor a reference to
the server's environment).
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from ..errors import SpecError, SpecErrors, describe
from ..redaction import is_secret_name, split_userinfo
from ..spec import Section

BODIES = ("pipeline", "stream", "batch", "validation")
SPEC_KEYS = ("connections", "schedule", "pricing", "alerts", "runtime", "description")
SECRET_ADVICE = "a literal secret: write secrets as ${ENV} references"
_NOT_SPEC = ("name", "type", "subtype", "customerId", "customer_id")
MAX_TITLE = 200
MAX_INPUT_TEXT = 4096

_INPUT_REF = re.compile(r"\$\{inputs\.([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")   # no ${NAME:-default}: a default is written out
_QUERY_PAIR = re.compile(r"[?&;]([^=&;#\s]+)=([^&;#\s]*)")
_SCHEME_WORD = re.compile(r"(?i)(bearer|basic|token)?")
# keys whose value is a secret (compared lowercased, without '-' and '_')
SECRET_KEYS = frozenset({"apikey", "password", "passwd", "pwd", "token", "accesstoken", "refreshtoken", "secret",
                         "clientsecret", "secretkey", "accesskey", "secretaccesskey", "sessiontoken", "privatekey",
                         "authorization", "proxyauthorization", "xapikey", "credentials"})


def service_spec(body: Any, service_id: str, base_dir: str) -> tuple[str, dict, str, str]:
    """``(title, spec, kind, customer id)`` of a create-service body; raises SpecError
    (SpecErrors for several) naming each offending path. The spec is not parsed here
    (see :func:`etl_actors.service.runner.create_service`)."""
    root = Section(body, "")
    title = root.get("name", types=str, check=lambda v: None if v.strip() and len(v) <= MAX_TITLE else
                     f"expected a title of 1 to {MAX_TITLE} characters")
    kept = {key: root.get(key, None, types=str) for key in ("type", "subtype")}
    customer = root.get("customer_id", "", types=str)
    given = [key for key in BODIES if root.has(key)]
    bodies = [key for key in given if key != "validation"]
    if not given or len(bodies) > 1:   # validation rules may also follow a pipeline's or batch's steps
        raise SpecError("pipeline", "expected one of pipeline, stream, batch, validation, got "
                        + (", ".join(given) or "none"))
    for key in SPEC_KEYS:
        root.has(key)
    root.done()
    problems = [SpecError(path, SECRET_ADVICE) for path in literal_secrets(body)]
    if problems:
        raise problems[0] if len(problems) == 1 else SpecErrors(problems)
    spec = {key: value for key, value in body.items() if key not in _NOT_SPEC}
    metadata = {key: value for key, value in kept.items() if value is not None}
    spec = {"name": pipeline_name(title, service_id), **spec, "metadata": {**metadata, "baseDir": base_dir}}
    return title, spec, given[0], customer


def pipeline_name(title: str, service_id: str) -> str:
    """A pipeline name for the service: a slug of its title and a short id
    (``Customer Data ETL`` -> ``customer-data-etl-3f9a1c2e``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48].strip("-") or "service"
    return f"{slug}-{service_id.rsplit('_', 1)[-1][:8]}"


# --- secrets ----------------------------------------------------------------------------

def literal_secrets(value: Any, path: str = "") -> list[str]:
    """The paths in ``value`` that hold a secret written out: a password in a URL's
    userinfo, a secret query parameter of a URL, or the value of a key that names a
    secret (``apiKey``, ``password``, ``token``, ``Authorization`` ...), unless written
    as ``${ENV}`` references (``${DB_PASSWORD}``, ``Bearer ${TOKEN}``). A request
    input (``${inputs.NAME}``) cannot stand for a secret."""
    return [p for p, v, secret_key in _walk(value, path) if _is_literal_secret(v, secret_key)]


def _walk(value: Any, path: str, secret_key: bool = False) -> Iterator[tuple[str, Any, bool]]:
    """``(path, leaf value, whether its key names a secret)`` of every leaf."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = re.sub(r"[-_]", "", str(key)).lower()
            yield from _walk(item, f"{path}.{key}" if path else str(key), name in SECRET_KEYS)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", secret_key)
    else:
        yield path, value, secret_key


def _is_literal_secret(value: Any, secret_key: bool) -> bool:
    if secret_key and value is not None and not isinstance(value, bool):
        return not (isinstance(value, str) and _written_as_env(value))
    if not isinstance(value, str) or "://" not in value:
        return False
    parts = split_userinfo(value)
    if parts is not None and parts[2] and not _written_as_env(parts[2]):
        return True
    return any(v and is_secret_name(name) and not _written_as_env(v) for name, v in _QUERY_PAIR.findall(value))


def _written_as_env(text: str) -> bool:
    """Whether ``text`` gives its secret as ``${ENV}`` references: it holds one, no
    request input, and besides them at most an auth scheme (``Bearer ${TOKEN}``)."""
    if not _ANY_REF.search(text) or _INPUT_REF.search(text):
        return False
    return bool(_SCHEME_WORD.fullmatch(_ANY_REF.sub("", text).strip()))


# --- inputs -------------------------------------------------------------------------------

def input_names(spec: Any) -> list[str]:
    """The inputs a spec references (``${inputs.NAME}``), sorted."""
    return sorted({name for _, value, _ in _walk(spec, "") if isinstance(value, str)
                   for name in _INPUT_REF.findall(value)})


def check_inputs(spec: Mapping[str, Any], inputs: Any) -> dict:
    """``inputs`` if they fill exactly the inputs ``spec`` references, with strings or
    numbers that hold no secret and no ``${...}``; else SpecError naming
    ``inputs.NAME``."""
    if not isinstance(inputs, Mapping):
        raise SpecError("inputs", f"expected a mapping, got {describe(inputs)}")
    wanted = input_names(spec)
    for name, value in inputs.items():
        path = f"inputs.{name}"
        if name not in wanted:
            raise SpecError(path, "is not an input of this service (it takes "
                            + (", ".join(wanted) or "none") + ")")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SpecError(path, f"expected a string or a number, got {describe(value)}")
        if isinstance(value, str) and ("${" in value or len(value) > MAX_INPUT_TEXT):
            raise SpecError(path, f"expected text of at most {MAX_INPUT_TEXT} characters without '${{'")
        if literal_secrets(value):
            raise SpecError(path, "an input cannot carry a secret (the service's spec refers to secrets as ${ENV})")
    missing = [name for name in wanted if name not in inputs]
    if missing:
        raise SpecError(f"inputs.{missing[0]}", "is required by the service's spec")
    return dict(inputs)


def apply_inputs(value: Any, inputs: Mapping[str, Any]) -> Any:
    """``value`` with each ``${inputs.NAME}`` filled: a string that is one reference
    becomes the input itself (a number stays a number), a reference inside text
    becomes its text."""
    if isinstance(value, Mapping):
        return {key: apply_inputs(item, inputs) for key, item in value.items()}
    if isinstance(value, list):
        return [apply_inputs(item, inputs) for item in value]
    if not isinstance(value, str) or "${inputs." not in value:
        return value
    whole = _INPUT_REF.fullmatch(value)
    if whole is not None:
        return inputs[whole.group(1)]
    return _INPUT_REF.sub(lambda m: str(inputs[m.group(1)]), value)


def placeholder_paths(spec: Any) -> list[str]:
    """Paths of the spec's values that hold an input reference: their validation waits
    for a request's inputs."""
    return [path for path, value, _ in _walk(spec, "") if isinstance(value, str) and _INPUT_REF.search(value)]
