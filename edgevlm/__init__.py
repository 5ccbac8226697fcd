"""edgevlm: an edge-optimised vision-language model runtime.

The runtime (this package without the `export`/`train` extras) needs only numpy,
onnxruntime, pillow, tokenizers and click; it never imports torch.

    import edgevlm
    vlm = edgevlm.load()                 # the embedded default model
    print(vlm.caption("scene.png"))
"""

__version__ = "0.1.0"


def load(path=None, **options):
    """Open a bundle directory (default: the embedded model) for captioning."""
    from edgevlm.runtime.pipeline import VLM

    return VLM.open(path, **options)
