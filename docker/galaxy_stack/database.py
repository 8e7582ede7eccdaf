"""When an error means Galaxy's database can't be reached (PostgreSQL restarting, stopped, or the
connection lost), as opposed to an error in a statement or in Galaxy's code."""
import psycopg2
from sqlalchemy.exc import DBAPIError


def unreachable(exc):
    """`exc`, or an exception it was raised from, is SQLAlchemy's for a lost or refused
    connection: SQLAlchemy saw the connection drop; or the driver could not reach the server (an
    OperationalError with no SQLSTATE: PostgreSQL gives one to every error it reports); or
    PostgreSQL refuses connections for now (class 08, connection exception; 57P, starting or
    shutting down)."""
    while exc is not None:
        if isinstance(exc, DBAPIError):
            code = getattr(exc.orig, "pgcode", None)
            return bool(exc.connection_invalidated
                        or (isinstance(exc.orig, psycopg2.OperationalError) and code is None)
                        or (code or "").startswith(("08", "57P")))
        exc = exc.__cause__ or exc.__context__
    return False
