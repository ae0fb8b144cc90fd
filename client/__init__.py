"""Talk to the served model: a command-line and Python client (remote over HTTP, or `--local` from an
export directory with no server) and locust load tests.

Remote mode needs only requests and the standard library; torch is imported by `--local` alone.
"""

from .errors import ClientError, HTTPError, LocalModelError, ModelNotFound, ServerUnreachable
from .remote import PredictionClient

__all__ = ["ClientError", "HTTPError", "LocalModelError", "ModelNotFound", "PredictionClient", "ServerUnreachable"]
