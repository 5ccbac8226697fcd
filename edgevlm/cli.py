"""The `edgevlm` command line: caption | export | info | bench.

User errors print one line on stderr and exit with code 2; never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgevlm.errors import ConfigError, EdgeVLMError


class _Group(click.Group):
    """Turns EdgeVLMError (and Ctrl-C) into one line + exit code, for every command."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeVLMError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgevlm")
def main():
    """edgevlm: caption images on-device with compact vision-language models.

    \b
    Example:
      edgevlm caption photo.png              # the embedded default model
      edgevlm caption *.png --model bundle/ --json
      edgevlm caption photos/ --out results.jsonl --resume
    """


def _stream_printer(prompter):
    """on_token callback printing the new text as it grows (decode the prefix, print the delta)."""
    ids, printed = [], [""]

    def on_token(token_id: int) -> None:
        ids.append(token_id)
        text = prompter.decode(ids)
        if text.startswith(printed[0]):
            sys.stdout.write(text[len(printed[0]):])
            sys.stdout.flush()
            printed[0] = text

    return on_token


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), help="Bundle directory (default: the embedded model).")
@click.option("--prompt", help="Instruction text, for models that take one.")
@click.option("--max-new-tokens", type=int, help="Tokens to generate at most (default from the bundle; cap 1024).")
@click.option("--num-beams", type=int, help="Beam search width (1 = greedy).")
@click.option("--temperature", type=float, help="Sample at this temperature (turns sampling on).")
@click.option("--top-k", type=int, help="Sample from the k most likely tokens (turns sampling on).")
@click.option("--top-p", type=float, help="Nucleus sampling mass (turns sampling on).")
@click.option("--repetition-penalty", type=float, help="Penalise tokens already seen (>1 discourages repeats).")
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--split/--no-split", default=None, help="--split tiles large images exactly like the reference (Idefics3/SmolVLM) processor; "
                   "--no-split encodes one downscaled tile: much faster, but a deviation from the reference "
                   "(default from the bundle).")
@click.option("--threads", type=int, default=0, help="Threads for ONNX Runtime (0 = all cores).")
@click.option("--model-format", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="ort: run the bundle's ORT-format graphs (a bundle exported with --format ort).")
@click.option("--vision-attention", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: a quantized bundle's vision attention on edgevlm's bf16 kernel (and, at int4/mixed, "
                   "the rest of each layer on its int8 kernel) where the CPU has AVX-512 BF16 and VNNI, else "
                   "the whole tower on ONNX Runtime; bf16: the kernels or an error; fp32: ONNX Runtime.")
@click.option("--timeout", type=float, help="Give up on one caption after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image (caption, tokens, timings).")
@click.option("--stream", is_flag=True, help="Print the caption token by token as it is generated.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Append one JSON line per image to this file as soon as it is done (progress bar on stderr).")
@click.option("--resume", is_flag=True, help="With --out: skip the images the file already records.")
def caption(images, model_dir, prompt, max_new_tokens, num_beams, temperature, top_k, top_p,
            repetition_penalty, seed, split, threads, model_format, vision_attention, timeout, as_json, stream, out,
            resume):
    """Caption images: files, directories or glob patterns.

    \b
    Examples:
      edgevlm caption scene.png
      edgevlm caption a.png b.jpg --model my_bundle/ --num-beams 3 --json
      edgevlm caption scene.png --temperature 0.8 --top-p 0.9 --seed 1
      edgevlm caption photos/ 'more/**/*.jpg' --out results.jsonl --resume
    """
    from edgevlm.batch import ResultsFile, expand_inputs

    if resume and out is None:
        raise ConfigError("--resume needs --out FILE (the results file to continue)")
    if stream and out is not None:
        raise ConfigError("--stream prints to the terminal; it cannot be combined with --out")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    paths = expand_inputs(images)
    sampling = any(v is not None for v in (temperature, top_k, top_p))
    gen = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, temperature=temperature, top_k=top_k,
               top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, do_sample=True if sampling else None)
    if out is not None:
        with ResultsFile(out, resume=resume) as results:  # refuse a used file before loading the model
            vlm = _load_model(model_dir, threads, gen, model_format, vision_attention)
            _caption_to_file(paths, results, lambda p: _record(vlm.run(p, prompt, split=split, timeout=timeout, **gen)))
        return
    vlm = _load_model(model_dir, threads, gen, model_format, vision_attention)
    failures = 0
    for name in paths:
        try:
            on_token = _stream_printer(vlm.prompter) if stream and not as_json else None
            if on_token and len(paths) > 1:
                click.echo(f"{name}: ", nl=False)
            result = vlm.run(name, prompt, split=split, on_token=on_token, timeout=timeout, **gen)
        except EdgeVLMError as exc:
            failures += 1
            if as_json:
                click.echo(json.dumps({"image": name, "error": str(exc)}))
            else:
                click.echo(f"error: {exc}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({"image": name, **_record(result)}))
        elif on_token:
            click.echo("")
        else:
            click.echo(f"{name}: {result.text}" if len(paths) > 1 else result.text)
    if failures:
        sys.exit(2)


def _load_model(model_dir, threads, gen, model_format="onnx", vision_attention="auto"):
    import edgevlm

    vlm = edgevlm.load(model_dir, threads=threads, model_format=model_format, vision_attention=vision_attention)
    vlm.generation_config(**gen)  # validate options once, before any image is read
    return vlm


def _record(result) -> dict:
    """The fields of one image's --json / --out record."""
    return {"caption": result.text, "tokens": len(result.token_ids), "prompt_tokens": result.prompt_tokens,
            "tiles": result.tiles, "timings_ms": result.timings_ms}


def _caption_to_file(paths, results, caption_one) -> None:
    """--out: records go to the file, a progress bar and a summary to stderr; exit 2 if any image failed."""
    from edgevlm.batch import run_batch, shown_path

    name = shown_path(str(results.path))
    try:
        summary = run_batch(paths, results, caption_one)
    except KeyboardInterrupt:
        click.echo(f"interrupted; the finished records are in {name} (add --resume to continue)", err=True)
        sys.exit(130)
    click.echo(f"{summary.captioned} captioned, {summary.failed} failed, {summary.skipped} already done: {name}",
               err=True)
    if summary.failed:
        sys.exit(2)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(bundle, as_json):
    """Show what a bundle holds (default: the embedded model).

    \b
    Example:
      edgevlm info my_bundle/
    """
    from edgevlm.bundle import describe, open_bundle

    summary = describe(open_bundle(bundle))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"bundle        {summary['path']}")
    click.echo(f"format        {summary['format']}")
    click.echo(f"architecture  {summary['architecture']}")
    click.echo(f"size          {summary['size_mb']} MB")
    for graph, precision in summary["precision"].items():
        diff = summary["validation"].get(graph, {}).get("max_abs_diff")
        check = f"  (validated: max |onnx - torch| = {diff:.1e})" if diff is not None else ""
        click.echo(f"  {graph:15s} {precision}{check}")
    text, vision = summary["config"]["text"], summary["config"]["vision"]
    click.echo(f"vision        {vision['image_size']}px, patch {vision['patch_size']}, {vision['num_layers']} layers x {vision['hidden_size']}")
    click.echo(f"text          {text['num_layers']} layers x {text['hidden_size']}, {text['num_heads']} heads / "
               f"{text['num_kv_heads']} kv, vocab {text['vocab_size']}, context {text['max_position_embeddings']}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--attention", type=click.Choice(["default", "fused"]), default="default", show_default=True,
              help="fused: ONNX Runtime MultiHeadAttention (vision) and GroupQueryAttention with a "
                   "shared KV buffer (decoder).")
@click.option("--quant", type=click.Choice(["fp32", "int8", "int4", "mixed"]), default="fp32", show_default=True,
              help="int8: dynamic int8 vision + decoder MatMuls; int4: MatMulNBits decoder, vision shipped 4-bit and run as int8, "
                   "4-bit embeddings; mixed: int4 except the most sensitive decoder linears (8 bit).")
@click.option("--format", "model_format", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="ort: also write each graph in ONNX Runtime's ORT format (mobile / minimal builds) and "
                   "required_operators.config (the ops a --minimal_build needs).")
@click.option("--no-quant-gate", "no_quant_gate", is_flag=True,
              help="Keep a quantized graph even if its error against fp32 is over the tolerance (for "
                   "random-weight models that only measure speed); the manifest records the error.")
def export(checkpoint, out, overwrite, attention, quant, model_format, no_quant_gate):
    """Export a checkpoint directory to an ONNX bundle (needs the `export` extra).

    \b
    Example:
      edgevlm export runs/default -o my_bundle/
      edgevlm export runs/default -o fast_bundle/ --attention fused --quant int4
      edgevlm export runs/default -o mobile_bundle/ --format ort
    """
    try:
        from edgevlm.export.to_onnx import export_bundle
        from edgevlm.models.registry import load_checkpoint
    except ImportError as exc:
        raise EdgeVLMError(f"export needs the export extra ({exc.name} is missing): pip install 'edgevlm[export]'") from None
    ckpt = load_checkpoint(checkpoint)
    manifest = export_bundle(ckpt.model, ckpt.tokenizer, out, preprocess=ckpt.preprocess.to_dict(),
                             prompt=ckpt.prompt.to_dict(), special_tokens=ckpt.special_tokens,
                             generation=ckpt.generation.to_dict(), overwrite=overwrite,
                             attention=attention, quant=quant, model_format=model_format,
                             quant_gate=not no_quant_gate)
    diffs = ", ".join(f"{g} {v['max_abs_diff']:.1e}" for g, v in manifest["validation"].items())
    click.echo(f"wrote {out} (validated against PyTorch: {diffs})")


def _register_commands():
    from edgevlm.bench_cli import bench
    from edgevlm.eval_cli import eval_command
    from edgevlm.train_cli import distill_command, train_command

    main.add_command(bench)
    main.add_command(eval_command)
    main.add_command(train_command)
    main.add_command(distill_command)
    from edgevlm.quantize_cli import quantize_command; main.add_command(quantize_command)  # noqa: E702


_register_commands()


if __name__ == "__main__":
    main()
