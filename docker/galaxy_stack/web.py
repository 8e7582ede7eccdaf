"""Galaxy's web application as the stack's web replicas serve it (docker/entrypoint.py, role_web),
with one answer added. A request that needs a server Galaxy can't reach right now fails in Galaxy
26.1 with a bare `500 Internal Server Error`, text, not JSON, naming nothing: its database
(PostgreSQL restarting), or, for a background task, Celery's broker (RabbitMQ) or result store
(Redis). Here it gets 503, Retry-After, and a message in Galaxy's own error format saying which
server is missing: nginx tries the request on the next web replica (proxy_next_upstream), and
the same request works once the server is back. Other errors are Galaxy's, as before. The routes
Galaxy still serves from its older WSGI application (running a tool, POST /api/tools, is one)
answer their own errors (galaxy.web.framework.decorators), and its request handling answers
those met before a route is reached: there, too, the database's absence answers 503."""
import logging
import sys

from kombu.exceptions import OperationalError as BrokerUnreachable
from redis.exceptions import ConnectionError as ResultStoreUnreachable
from sqlalchemy.exc import DBAPIError
from starlette.responses import JSONResponse

from galaxy.exceptions.error_codes import error_codes_by_name
from galaxy.util.json import safe_dumps
from galaxy.web.framework import base, decorators
from galaxy.webapps.galaxy import fast_factory
from galaxy_stack import database

log = logging.getLogger(__name__)
UNREACHABLE = {BrokerUnreachable: "task queue (the rabbitmq service)",
               ResultStoreUnreachable: "task result store (the redis service)"}
DATABASE = "database (the postgres service)"


def factory():
    app = fast_factory.factory()
    for exception, server in UNREACHABLE.items():
        app.add_exception_handler(exception, answer_unreachable(server, "needs a background task, and"))
    app.add_exception_handler(DBAPIError, database_error)
    return app


async def database_error(request, exc):
    if not database.unreachable(exc):
        raise exc  # Galaxy's own answer (500), as without this handler
    return await answer_unreachable(DATABASE, "failed:")(request, exc)


def answer_unreachable(server, need):
    async def answer(request, exc):
        log.error("%s %s %s the %s is unreachable: %s", request.method, request.url.path, need,
                  server, exc)
        return JSONResponse(status_code=503, headers=RETRY, content=unreachable(server, need))
    return answer


RETRY = {"Retry-After": "30"}


def unreachable(server, need):
    return {"err_msg": f"This request {need} Galaxy can't reach its {server} right now. Try again "
                       "in a minute; if it goes on, tell the site's admin.",
            "err_code": error_codes_by_name["INTERNAL_SERVER_ERROR"].code}


galaxy_wsgi_api_error = getattr(decorators, "__api_error_response")


def wsgi_api_error(trans, **kwds):
    exception = kwds.get("exception")
    if exception is None or not database.unreachable(exception):
        return galaxy_wsgi_api_error(trans, **kwds)
    trans.response.status = 503
    trans.response.headers["Retry-After"] = RETRY["Retry-After"]
    return database_lost(trans.request.method, trans.request.path, exception)


def database_lost(method, path, exc):
    """The body of a WSGI request's 503 when the database is unreachable, logged."""
    log.error("%s %s failed: the %s is unreachable: %s", method, path, DATABASE, exc)
    return safe_dumps(unreachable(DATABASE, "failed:"))


# Looked up by name when a WSGI route fails, so replacing it here holds for every route.
setattr(decorators, "__api_error_response", wsgi_api_error)


galaxy_handle_request = base.WebApplication.handle_request


def handle_request(self, request_id, path_info, environ, start_response, *args, **kwargs):
    """Galaxy's WSGI request handling, with the database's absence before a route is reached
    (its transaction looks up the session or API key) answered 503 too: else Galaxy's error
    middleware answers 500 (a tool run when the database went between nginx's login check and
    the request)."""
    try:
        return galaxy_handle_request(self, request_id, path_info, environ, start_response, *args, **kwargs)
    except Exception as e:
        if not database.unreachable(e):
            raise
        body = database_lost(environ.get("REQUEST_METHOD"), path_info, e).encode()
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))), *RETRY.items()],
                       sys.exc_info())
        return [body]


base.WebApplication.handle_request = handle_request
