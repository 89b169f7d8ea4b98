"""One module per kind; importing this package registers every kopf handler."""
from . import training  # noqa: F401
