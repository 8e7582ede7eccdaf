"""Galaxy's web application as the stack's web replicas serve it (docker/entrypoint.py, role_web),
with one answer added. A request that needs a background task while Celery's broker (RabbitMQ)
or result store (Redis) is unreachable fails in Galaxy 26.1 with a bare `500 Internal Server
Error`, text, not JSON, naming nothing. Here it gets 503, Retry-After, and a message in Galaxy's
own error format saying which server is missing: the same request works once it is back, and
requests that need no task are not affected."""
import logging

from kombu.exceptions import OperationalError as BrokerUnreachable
from redis.exceptions import ConnectionError as ResultStoreUnreachable
from starlette.responses import JSONResponse

from galaxy.exceptions.error_codes import error_codes_by_name
from galaxy.webapps.galaxy import fast_factory

log = logging.getLogger(__name__)
UNREACHABLE = {BrokerUnreachable: "task queue (the rabbitmq service)",
               ResultStoreUnreachable: "task result store (the redis service)"}


def factory():
    app = fast_factory.factory()
    for exception, server in UNREACHABLE.items():
        app.add_exception_handler(exception, unreachable(server))
    return app


def unreachable(server):
    async def answer(request, exc):
        log.error("%s %s needs a background task, and the %s is unreachable: %s",
                  request.method, request.url.path, server, exc)
        return JSONResponse(status_code=503, headers={"Retry-After": "30"}, content={
            "err_msg": f"This request needs a background task, and Galaxy can't reach its {server} "
                       "right now. Try again in a minute; if it goes on, tell the site's admin.",
            "err_code": error_codes_by_name["INTERNAL_SERVER_ERROR"].code})
    return answer
