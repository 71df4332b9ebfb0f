"""How the Google Ads sandbox says no, reads GAQL and reads a UserData (for ``sandbox/google_ads.py``).

Errors travel as the real API sends them (reference §1, §4): a gRPC status, a serialised
GoogleAdsFailure in the ``google.ads.googleads.<version>.errors.googleadsfailure-bin`` trailer and a
``request-id`` trailer; an error about one operation names it by ``operations[i]`` in its field path.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from audience_sync.destinations.google_ads_api import (
    ADDRESS_FIELDS,
    FAILURE_TRAILER,
    HASHED_FIELDS,
    MAX_IDENTIFIERS_PER_USER,
    ErrorCode,
    ErrorLocation,
    GoogleAdsError,
    GoogleAdsFailure,
)
from audience_sync.sandbox.grpc_host import RpcAbort

Member = frozenset[tuple[str, str]]
#: a field path element: a field name, or (field name, index)
Step = str | tuple[str, int]

#: the gRPC status Google answers each error category with (others: INVALID_ARGUMENT)
_STATUS = {
    "authentication_error": grpc.StatusCode.UNAUTHENTICATED,
    "authorization_error": grpc.StatusCode.PERMISSION_DENIED,
    "not_allowlisted_error": grpc.StatusCode.PERMISSION_DENIED,
    "quota_error": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "internal_error": grpc.StatusCode.INTERNAL,
    # assumed: gRPC's status for a concurrency conflict (the client converts it like INVALID_ARGUMENT)
    "database_error": grpc.StatusCode.ABORTED,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_QUERY = re.compile(
    r"SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<resource>\w+)(?:\s+WHERE\s+(?P<where>.+?))?\s*", re.S
)
_CONDITION = re.compile(r"([\w.]+)\s*=\s*('[^']*'|-?\d+|[A-Z][A-Z0-9_]*)")


@dataclass(frozen=True)
class Problem:
    """One error of a failure: ``code`` is ``category.NAME`` (``database_error.CONCURRENT_MODIFICATION``)."""

    code: str
    message: str
    path: tuple[Step, ...] = ()


def problem(code: str, message: str, *path: Step) -> Problem:
    return Problem(code, message, path)


def error_code(code: str) -> ErrorCode:
    """``ErrorCode`` of ``category.NAME``; ValueError when the version has no such error."""
    category, _, name = code.partition(".")
    field = ErrorCode.pb().DESCRIPTOR.fields_by_name.get(category)
    value = field.enum_type.values_by_name.get(name) if field is not None and field.enum_type else None
    if value is None:
        raise ValueError(f"unknown Google Ads error {code}")
    return ErrorCode(**{category: value.number})


def failure(problems: Iterable[Problem]) -> GoogleAdsFailure:
    errors = []
    for p in problems:
        steps = [
            ErrorLocation.FieldPathElement(field_name=s[0], index=s[1])
            if isinstance(s, tuple)
            else ErrorLocation.FieldPathElement(field_name=s)
            for s in p.path
        ]
        location = ErrorLocation(field_path_elements=steps)
        errors.append(GoogleAdsError(error_code=error_code(p.code), message=p.message, location=location))
    return GoogleAdsFailure(errors=errors, request_id=secrets.token_hex(8))


def abort(*problems: Problem, status: grpc.StatusCode | None = None) -> RpcAbort:
    """The call's end: ``problems`` as a GoogleAdsFailure trailer, with the category's status."""
    first = problems[0]
    code = status or _STATUS.get(first.code.partition(".")[0], grpc.StatusCode.INVALID_ARGUMENT)
    trailers = [
        (FAILURE_TRAILER, GoogleAdsFailure.serialize(failure(problems))),
        ("request-id", secrets.token_hex(8)),
    ]
    return RpcAbort(code, f"Request contains an invalid argument. {first.code}", trailers)


def fail(code: str, message: str, *path: Step) -> RpcAbort:
    """One-problem :func:`abort`."""
    return abort(problem(code, message, *path))


def parse_query(query: str) -> tuple[str, dict[str, str]]:
    """``(resource, {field: value})`` of ``SELECT ... FROM resource [WHERE f = v AND ...]``, the only
    shape the destination sends; anything else is a query error, as a query Google cannot parse is."""
    parsed = _QUERY.fullmatch(query.strip())
    if parsed is None:
        raise fail("query_error.UNEXPECTED_END_OF_QUERY", "cannot parse the query", "query")
    wanted: dict[str, str] = {}
    for cond in re.split(r"\s+AND\s+", parsed.group("where") or ""):
        if not cond.strip():
            continue
        m = _CONDITION.fullmatch(cond.strip())
        if m is None:
            raise fail("query_error.UNEXPECTED_INPUT", f"the sandbox does not serve: {cond.strip()}", "query")
        wanted[m.group(1)] = m.group(2).strip("'")
    return parsed.group("resource"), wanted


def read_user_data(
    user_data: Any, i: int, kind: str, allowed: frozenset[str]
) -> tuple[Member, list[Problem]]:
    """The (field, value) pairs of operation ``i``'s UserData (raw protobuf), and what is wrong with it."""
    base: tuple[Step, ...] = (("operations", i), kind)
    identifiers = user_data.user_identifiers
    if not identifiers:
        return frozenset(), [
            problem("offline_user_data_job_error.MISSING_USER_IDENTIFIER", "no identifier", *base)
        ]
    if len(identifiers) > MAX_IDENTIFIERS_PER_USER:
        message = f"at most {MAX_IDENTIFIERS_PER_USER} identifiers per UserData"
        return frozenset(), [problem("offline_user_data_job_error.TOO_MANY_USER_IDENTIFIERS", message, *base)]
    pairs: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for j, ident in enumerate(identifiers):
        which = ident.WhichOneof("identifier")
        if which == "address_info":
            fields = [
                (f, getattr(ident.address_info, f)) for f in ADDRESS_FIELDS if getattr(ident.address_info, f)
            ]
        else:
            fields = [(which, getattr(ident, which))] if which else []
        where = (*base, ("user_identifiers", j))
        if not fields:
            problems.append(
                problem("offline_user_data_job_error.MISSING_USER_IDENTIFIER", "empty identifier", *where)
            )
        for field, value in fields:
            if field not in allowed:
                message = f"{field} does not fit this list's upload key type"
                problems.append(
                    problem("offline_user_data_job_error.INCOMPATIBLE_UPLOAD_KEY_TYPE", message, *where)
                )
            elif field in HASHED_FIELDS and not _SHA256.fullmatch(value):
                message = "The SHA256 encoded value is malformed."
                problems.append(
                    problem("offline_user_data_job_error.INVALID_SHA256_FORMAT", message, *where, field)
                )
            pairs.append((field, value))
    return frozenset(pairs), problems


def apply_ops(members: set[Member], ops: Iterable[tuple[str, Member]]) -> None:
    """Apply a job's operations in order. Google removes the user the identifiers match: a ``remove``
    drops every member sharing an identifier with it (found through an index, not a scan)."""
    index: dict[tuple[str, str], set[Member]] | None = None
    for kind, member in ops:
        if kind == "remove_all":
            members.clear()
            index = None
        elif kind == "create":
            members.add(member)
            for pair in member if index is not None else ():
                index.setdefault(pair, set()).add(member)  # type: ignore[union-attr]
        else:
            if index is None:
                index = {}
                for m in members:
                    for pair in m:
                        index.setdefault(pair, set()).add(m)
            for m in set().union(*(index.get(pair, set()) for pair in member)):
                members.discard(m)
                for pair in m:
                    index[pair].discard(m)
