"""vssflow: video to sound and speech with one flow-matching DiT (VSSFlow, arXiv 2509.24773).

The library layer: torch, numpy and pyarrow only. Ray, DeepSpeed and MLflow live in ``pipelines/``.
"""

__version__ = "0.1.0"

__all__ = ["Generator", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import vssflow` (and the CLI's --help) stays fast and torch-free.
    if name == "Generator":
        from vssflow.generator import Generator

        return Generator
    raise AttributeError(name)
