"""r1_ds: R1 hierarchical-attention language models trained with DeepSpeed.

`import r1_ds.model` (or any of the names below) registers the R1 classes with transformers' Auto*
factories. The package itself imports nothing heavy, so `r1-ds --help` starts without torch.
"""

__version__ = "0.1.0"

__all__ = ["R1Config", "R1ForCausalLM", "R1ForSequenceClassification", "R1Model", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'r1_ds' has no attribute {name!r}")
