"""`GET /api/v1/openapi.json`: the whole API described in OpenAPI 3.0 (issue 5, item 5).

Built from the running daemon: the job request's parameters come from each action's own
parameter schema (the same one `GET /actions` shows and the executor checks), so the description
cannot drift from what a submit accepts. The rest is written here; `tests/daemon/test_openapi.py`
fails when a route exists without a description or the reverse, and the fuzz test
(`tests/daemon/test_fuzz.py`) drives the daemon from this document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.api.app import API, DAEMON_KEY, DEFAULT_LIMIT, MAX_LIMIT, _version, public_actions
from daemon.api.events_routes import KINDS
from daemon.model import CancelMode, HostStatus, JobStatus

JSON = "application/json"
NAME = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "bad input (nothing changed)",
        403: "not allowed for this uid",
        404: "no such resource",
        405: "method not allowed",
        409: "conflicts with the current state (nothing changed)",
        413: "request body too large",
        423: "locked",
        429: "rate limit or stream limit reached (see Retry-After)",
    }
    codes = sorted({*statuses, 403, 429})
    return {str(s): _json(_ref("Error"), reasons.get(s, "error")) for s in codes}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _job_request(actions: dict[str, Any]) -> dict[str, Any]:
    """One alternative per action: its name as an enum of one, its parameter schema."""
    variants = []
    for name, spec in actions.items():
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["action"],
                "properties": {
                    "action": {"type": "string", "enum": [name]},
                    "params": spec.schema(),
                    "correlation_id": {"type": "string", "minLength": 1, "maxLength": 50},
                    "description": {"type": "string", "maxLength": 4096},
                },
            }
        )
    return {"oneOf": variants} if variants else {"type": "object"}


def _schemas(actions: dict[str, Any]) -> dict[str, Any]:
    job_request = _job_request(actions)
    anything = {"type": "object", "additionalProperties": True}
    identity: dict[str, Any] = {  # what a listing row and a whole job both start with
        "id": {"type": "string"},
        "action": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "correlation_id": {"type": "string"},
        "owner": {"type": "integer"},
    }
    summary: dict[str, Any] = {  # a listing row; a batch answer's entries add their href
        "type": "object",
        "required": [*identity, "tasks", "cancel"],
        "properties": {
            **identity,
            "tasks": {"type": "integer"},
            "cancel": {**anything, "nullable": True},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "HostRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "address", "port", "pool"],
            "properties": {
                "name": {"type": "string", "pattern": NAME},
                "address": {"type": "string", "pattern": "^[A-Za-z0-9._:\\[\\]-]{1,253}$"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "pool": {"type": "string", "pattern": UUID},
                "transport": {"type": "string", "enum": ["stomp", "http"]},
                "tls": {"type": "boolean"},
            },
        },
        "Host": {
            "type": "object",
            "required": ["name", "address", "port", "pool", "transport", "tls", "status"],
            "properties": {
                "name": {"type": "string"},
                "address": {"type": "string"},
                "port": {"type": "integer"},
                "pool": {"type": "string"},
                "transport": {"type": "string"},
                "tls": {"type": "boolean"},
                "status": {"type": "string", "enum": [s.value for s in HostStatus]},
                "spm": {"type": "boolean"},
                "last_seen": {"type": "number", "nullable": True},
            },
        },
        "JobRequest": job_request,
        "BatchRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["batch"],
            "properties": {
                "batch": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {"action": {"type": "string"}, "params": anything},
                    },
                },
                "correlation_id": {"type": "string", "minLength": 1, "maxLength": 50},
            },
        },
        "Job": {
            "type": "object",
            "description": "a job with its step tree, commands, VDSM tasks, cancel record, locks",
            "required": [*identity, "steps", "tasks", "cancel", "result"],
            "properties": {
                **identity,
                "steps": {"type": "array", "items": anything},
                "tasks": {"type": "array", "items": anything},
                "commands": {"type": "array", "items": anything},
                "locks": {"type": "array", "items": anything},
                "cancel": {**anything, "nullable": True},
                "result": {"nullable": True},
            },
        },
        "JobSummary": summary,
        "BatchEntry": {
            "type": "object",
            "description": "a job of a batch answer (?view=summary): its listing row and href",
            "required": [*summary["required"], "href"],
            "properties": {
                **summary["properties"],
                "href": {"type": "string", "description": "the job's own URL, with its tree"},
            },
        },
        "BatchAnswer": {
            "type": "object",
            "description": "the jobs of a batch, in entry order: summaries, or with "
            "?view=full whole jobs",
            "required": ["correlation_id", "jobs"],
            "properties": {
                "correlation_id": {"type": "string", "nullable": True},
                "jobs": {
                    "type": "array",
                    "items": {"oneOf": [_ref("BatchEntry"), _ref("Job")]},
                },
            },
        },
        "CancelRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {
                    "type": "string",
                    "enum": [CancelMode.STOP.value, CancelMode.REVERT.value],
                },
                "reason": {"type": "string", "maxLength": 1024},
                "force": {"type": "boolean", "description": "root or the admin group only"},
            },
        },
        "CancelCorrelatedRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["correlation_id"],
            "properties": {
                "correlation_id": {"type": "string", "minLength": 1},
                "mode": {
                    "type": "string",
                    "enum": [CancelMode.STOP.value, CancelMode.REVERT.value],
                },
                "reason": {"type": "string", "maxLength": 1024},
                "force": {"type": "boolean"},
            },
        },
    }


def _paths() -> dict[str, Any]:
    job_id = _path("id", {"type": "string"})
    return {
        f"{API}/health": {
            "get": {
                "summary": "the daemon's state: version, uptime, jobs by status, hosts",
                "operationId": "health",
                "responses": {"200": _json({"type": "object", "required": ["status"]}, "ok")}
                | _errors(),
            }
        },
        f"{API}/actions": {
            "get": {
                "summary": "actions a client may submit, their parameter schema, cancel policy",
                "operationId": "listActions",
                "responses": {"200": _json({"type": "object", "required": ["actions"]}, "ok")}
                | _errors(),
            }
        },
        f"{API}/hosts": {
            "get": {
                "summary": "registered hosts",
                "operationId": "listHosts",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"hosts": {"type": "array", "items": _ref("Host")}},
                        },
                        "ok",
                    )
                }
                | _errors(400),
            },
            "post": {
                "summary": "register a host (the daemon connects and monitors it)",
                "operationId": "addHost",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("HostRequest")}},
                },
                "responses": {"201": _json(_ref("Host"), "registered")} | _errors(400, 409, 413),
            },
        },
        f"{API}/hosts/{{name}}": {
            "delete": {
                "summary": "unregister a host with no unsettled tasks and no locks",
                "operationId": "removeHost",
                "parameters": [_path("name", {"type": "string"})],
                "responses": {"200": _json({"type": "object"}, "removed")} | _errors(400, 404, 409),
            }
        },
        f"{API}/jobs": {
            "get": {
                "summary": "jobs, newest first",
                "operationId": "listJobs",
                "parameters": [
                    _query("status", {"type": "string"}, "comma-separated job statuses"),
                    _query("action", {"type": "string"}, "an action name"),
                    _query(
                        "correlation_id",
                        {"type": "string", "minLength": 1, "maxLength": 50},
                        "the jobs of one correlation id",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        f"at most this many (default {DEFAULT_LIMIT})",
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["jobs", "count", "total"],
                            "properties": {
                                "jobs": {"type": "array", "items": _ref("JobSummary")},
                                "count": {"type": "integer"},
                                "total": {"type": "integer"},
                            },
                        },
                        "ok",
                    )
                }
                | _errors(400),
            },
            "post": {
                "summary": "submit a job, or a batch (one job per entry, all checked first)",
                "operationId": "submit",
                "parameters": [
                    _query(
                        "view",
                        {"type": "string", "enum": ["summary", "full"], "default": "summary"},
                        "a batch's answer: a summary per job, or the full jobs",
                    )
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": {"oneOf": [_ref("JobRequest"), _ref("BatchRequest")]}}
                    },
                },
                "responses": {
                    "201": _json(
                        {"oneOf": [_ref("Job"), _ref("BatchAnswer")]},
                        "committed before the answer: the job, or for a batch its jobs",
                    )
                }
                | _errors(400, 409, 413),
            },
        },
        f"{API}/jobs/{{id}}": {
            "get": {
                "summary": "a job with its step tree, commands, tasks and cancel record",
                "operationId": "showJob",
                "parameters": [job_id],
                "responses": {"200": _json(_ref("Job"), "ok")} | _errors(400, 404),
            }
        },
        f"{API}/jobs/{{id}}/cancel": {
            "post": {
                "summary": "cancel a job (its owner, root or the admin group)",
                "operationId": "cancelJob",
                "parameters": [job_id],
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": _ref("CancelRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Job"), "already cancelled or ended: nothing changed"),
                    "202": _json(_ref("Job"), "the cancel intent is committed"),
                }
                | _errors(400, 404, 409, 413),
            }
        },
        f"{API}/jobs/{{id}}/clear": {
            "post": {
                "summary": "drop an ended job whose tasks are settled (owner, root, admin group)",
                "operationId": "clearJob",
                "parameters": [job_id],
                "responses": {"200": _json({"type": "object", "required": ["cleared"]}, "cleared")}
                | _errors(400, 404, 409),
            }
        },
        f"{API}/cancel": {
            "post": {
                "summary": "cancel every job of a correlation id",
                "operationId": "cancelCorrelated",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("CancelCorrelatedRequest")}},
                },
                "responses": {"202": _json({"type": "object"}, "one result per job")}
                | _errors(400, 404, 413),
            }
        },
        f"{API}/events": {
            "get": {
                "summary": "server-sent events of every change (see docs/API.md)",
                "operationId": "events",
                "parameters": [
                    _query("job", {"type": "string"}, "only this job's events"),
                    _query("kind", {"type": "string"}, f"comma-separated: {', '.join(KINDS)}"),
                    _query(
                        "heartbeat",
                        {"type": "number", "minimum": 0.05, "maximum": 300},
                        "seconds between keep-alive comments (default 15)",
                    ),
                    _query(
                        "last_event_id",
                        {"type": "string"},
                        "resume after this id (as the Last-Event-ID header does)",
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "an endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                }
                | _errors(400),
            }
        },
        f"{API}/openapi.json": {
            "get": {
                "summary": "this document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                }
                | _errors(),
            }
        },
    }


def openapi_document(actions: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "taskmgrd local API",
            "version": _version(),
            "description": "Unix socket, JSON. The caller is known by its peer credentials. "
            'Errors are {"error": {"code", "message"}}; a rejected request changes nothing.',
        },
        "servers": [{"url": "http://taskmgrd"}],
        "paths": _paths(),
        "components": {"schemas": _schemas(actions)},
    }


OPENAPI_KEY = web.AppKey("openapi", dict)  # built on first use: actions are fixed for life


async def openapi(request: web.Request) -> web.Response:
    cache: dict[str, Any] = request.app[OPENAPI_KEY]
    if not cache:
        cache.update(openapi_document(public_actions(request.app[DAEMON_KEY])))
    return web.json_response(cache)


def add_openapi_route(app: web.Application) -> None:
    app[OPENAPI_KEY] = {}
    app.router.add_get(f"{API}/openapi.json", openapi)
