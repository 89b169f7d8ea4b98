"""One module per kind; importing this package registers every kopf handler."""
from . import deployment, drift, training  # noqa: F401
