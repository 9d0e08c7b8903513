"""attndsl: a declarative graph compiler for attention models."""

from attndsl.errors import AttnError
from attndsl.frontend import build, parse

__version__ = "0.1.0"
__all__ = ["AttnError", "build", "parse", "__version__"]
