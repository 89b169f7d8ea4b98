"""One module per kind; importing this package registers every kopf handler."""
from . import deployment, training  # noqa: F401
