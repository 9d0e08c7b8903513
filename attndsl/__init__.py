"""attndsl: a declarative graph compiler for attention models.

    import attndsl
    graph = attndsl.build("specs/gpt.attn", config={"layers": 2})
    model = attndsl.compile("specs/gpt.attn", backend="numpy", config={"layers": 2}, seed=0)
    out = model(tokens=ids)
"""

from attndsl.errors import AttnError
from attndsl.frontend import build, parse
from attndsl.hf import export_hf, from_hf, import_hf
from attndsl.model import Model, compile
from attndsl.onnx_export import export_onnx
from attndsl.quantize import quantize
from attndsl.training.trainer import train

__version__ = "0.1.0"
__all__ = ["AttnError", "Model", "build", "compile", "export_hf", "export_onnx", "from_hf",
           "import_hf", "parse", "quantize", "train", "__version__"]
