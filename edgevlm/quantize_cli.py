"""`edgevlm quantize`: the per-layer weight-quantization report of a checkpoint, no bundle written."""

from __future__ import annotations

from pathlib import Path

import click

from edgevlm.errors import ConfigError, EdgeVLMError

CHOICES = ("int8", "int4", "mixed")
MAX_CALIB = 512  # calibration images at most: each is one PyTorch forward pass


@click.command("quantize")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--quant", default="mixed", show_default=True,
              help="int8: every linear dynamic int8 per channel; int4: decoder MatMulNBits 4 bit, vision 4-bit weights run as int8; "
                   "mixed: as int4, the decoder linears most sensitive to int4 kept at 8 bit (25% budget).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report to this file.")
@click.option("--calib", default=8, show_default=True, type=int,
              help="Calibration images (the first N of the scenes corpus' val split).")
def quantize_command(checkpoint, quant, json_path, calib):
    """Measure each linear layer's weight-quantization error on calibration images.

    Quantizes the weights in PyTorch in exactly the formats `edgevlm export --quant` writes and
    reports, per nn.Linear, the max abs and relative RMS error of its output (only its own weight
    quantized). Needs the export extra.

    \b
    Example:
      edgevlm quantize edgevlm/assets/default_checkpoint --quant mixed
      edgevlm quantize runs/default --quant int4 --calib 32 --json int4_report.json
    """
    if quant not in CHOICES:
        raise ConfigError(f"--quant must be one of {', '.join(CHOICES)}, got {quant!r}")
    if not 1 <= calib <= MAX_CALIB:
        raise ConfigError(f"--calib must be 1..{MAX_CALIB} images, got {calib}")
    if not checkpoint.is_dir():
        raise ConfigError(f"{checkpoint}: checkpoint directory not found")
    try:
        from edgevlm.export.quant_report import calibration_batches, eos_id, format_table, quant_report, write_json
        from edgevlm.models.registry import load_checkpoint
    except ImportError as exc:
        raise EdgeVLMError(f"quantize needs the export extra ({exc.name} is missing): pip install 'edgevlm[export]'") from None
    ckpt = load_checkpoint(checkpoint)
    batches = calibration_batches(ckpt.tokenizer, ckpt.prompt, ckpt.preprocess,
                                  eos_id(ckpt.generation.eos_token_ids, ckpt.special_tokens), calib)
    report = quant_report(ckpt.model, batches, quant)
    click.echo(format_table(report))
    if json_path is not None:
        try:
            write_json(report, json_path)
        except OSError as exc:
            raise ConfigError(f"cannot write {json_path}: {exc.strerror}") from None
        click.echo(f"wrote {json_path}", err=True)
