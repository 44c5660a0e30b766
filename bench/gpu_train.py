"""GPU training throughput: crma_core's recipe step against a plain peft LoRA loop.

For each model shape (random weights with the real dimensions, built on the device in
bf16; nothing is downloaded) one process measures, on the same batches:
  (a) peft_eager: the plain loop, ``model(**batch, labels=...)`` (full logits, the model's
      own loss), AdamW, clip_grad_norm_(1.0);
  (b) recipe_eager_crma_off / (c) recipe_eager_crma_on: crma_core's step
      (``prepare_model``, ``optimizer_groups`` + ``make_optimizer``, ZClip, ``train_step``
      with the chunked LM-head loss; CRMA on also logs ``stats()`` each step, as the loop
      does);
  (d) recipe_compiled_crma_off / _on: the same after ``compile_for_training`` (--compile,
      default on CUDA); with --gemma-flex also Gemma-2 with flex attention (soft-capping
      kept);
  (e) Mistral: QLoRA NF4 (bitsandbytes; the random model is saved once to --workdir and
      reloaded 4-bit): peft loop, recipe CRMA off/on; then with gradient checkpointing at
      1×seq CRMA off/on;
  (f) memory configurations: Mistral QLoRA + CRMA + checkpointing at 1×1024 and 4×2048
      (isolated: only that run's optimizer state alive); Gemma-2 at 8×1024 is (c)/(d).
Variants of a phase are interleaved step by step (warm-up steps first), medians reported;
peak memory is torch.cuda.max_memory_allocated over a variant's steps. Every learning rate
is 0 so all variants see the same weights (the optimizers still do all their work): the
losses of variants computing the same function must agree, and the JSON checks that.
MFU = tokens/s × 4N / the bf16 matmul rate measured here (8192³), N = matmul parameters
incl. the LM head (bench/gpu_shapes.py).

    python3 bench/gpu_train.py --device cuda                 # on the GPU box (bench/run_gpu.sh)
    .venv/bin/python bench/gpu_train.py --toy --device cpu --out /tmp/gpu_toy.json
    .venv/bin/python bench/gpu_train.py --merge a.json b.json --out docs/benchmarks/gpu.json

Writes the JSON after every phase (``--out``, default docs/benchmarks/gpu.json), so a run
stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_measure import (Variant, interleave, matmul_ceiling,  # noqa: E402
                               random_batches, summarize)
from bench.gpu_shapes import SHAPES, Shape, toy_shapes  # noqa: E402
from crma_core import CRMAConfig, LoraSettings  # noqa: E402
from crma_core.clipping import make_clipper  # noqa: E402
from crma_core.compile import compile_for_training  # noqa: E402
from crma_core.loop import train_step  # noqa: E402
from crma_core.loss import LossOptions  # noqa: E402
from crma_core.model import find_decoder  # noqa: E402
from crma_core.optim import make_optimizer  # noqa: E402
from crma_core.recipe import load_base_model, optimizer_groups, prepare_model  # noqa: E402

LORA = LoraSettings(r=16, alpha=32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--toy", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--gemma-flex", action="store_true",
                        help="also Gemma-2 with flex attention (compiled phase)")
    parser.add_argument("--loss-chunk-tokens", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the random QLoRA base is saved (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "gpu.json")
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    if not args.toy and not args.device.startswith("cuda"):
        parser.error("real shapes need --device cuda; use --toy on the CPU")
    table = toy_shapes() if args.toy else SHAPES
    args.shape_list = [table[name.strip()] for name in args.shapes.split(",") if name.strip()]
    if args.toy and args.loss_chunk_tokens is None:
        args.loss_chunk_tokens = 16  # several chunks per toy batch
    return args


# -- models -------------------------------------------------------------------------------------
def build_base(shape: Shape, device: str):
    """Random-weight bf16 causal LM, initialised directly on ``device``."""
    from transformers import AutoModelForCausalLM

    config = shape.config()
    attention = "eager" if shape.family == "gemma2" else "sdpa"  # as crma_core.recipe loads it
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                 attn_implementation=attention)
    model.config.use_cache = False
    return model.train()


def wrap(base, *, quantization: str | None = None):
    """peft LoRA + CRMA the way the recipe builds them; LoRA B and CRMA W off zero."""
    torch.manual_seed(0)
    lora = LoraSettings(r=LORA.r, alpha=LORA.alpha, quantization=quantization)
    model, handle = prepare_model(base, lora=lora, crma=CRMAConfig(), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # timing on zeros can flatter kernels; and W = 0 would
        for name, p in model.named_parameters():  # make CRMA on/off compute the same loss
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator).to(p) * 1e-3)
        for layer in handle.layers:
            layer.write.copy_(torch.randn(layer.write.shape, generator=generator) * 1e-3)
    model.train()
    return model, handle


class CRMASwitch:
    """Attach/detach the CRMA hooks between steps (off = no hook at all)."""

    def __init__(self, model, handle):
        self.decoder = find_decoder(model)
        self.handle = handle

    def on(self) -> None:
        if not self.handle._hooks:
            self.handle.attach(self.decoder)

    def off(self) -> None:
        if self.handle._hooks:
            self.handle.remove()


def peft_variant(name, model, batches, *, enter, **info) -> Variant:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)

    def run(batch):
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(out.loss.detach())

    return Variant(name, run, batches, enter=enter,
                   info={"loop": "peft", "loss": "full logits", **info})


def eager_variants(names: tuple[str, str, str], model, switch, batches, shape, args,
                   **info) -> list[Variant]:
    """(plain peft loop, our recipe with CRMA off, with CRMA on) on the same model, uncompiled."""
    peft_name, off_name, on_name = names
    eager = LossOptions(chunk_tokens=args.loss_chunk_tokens)
    common = dict(batch=shape.batch, seq=shape.seq, compiled=False, **info)
    return [
        peft_variant(peft_name, model, batches, enter=switch.off, **common),
        recipe_variant(off_name, model, None, batches, options=eager, enter=switch.off,
                       **common),
        recipe_variant(on_name, model, switch.handle, batches, options=eager, enter=switch.on,
                       **common),
    ]


def recipe_variant(name, model, handle, batches, *, options: LossOptions, enter,
                   **info) -> Variant:
    """crma_core's step; ``handle`` None = CRMA off (its parameters not in the optimizer)."""
    groups = optimizer_groups(model, handle)
    optimizer = make_optimizer(**groups, lr_main=0.0, lr_mix=0.0, lr_gate=0.0)
    clipper = make_clipper("zclip", 1.0)

    def run(batch):
        loss, _, _ = train_step(model, batch, optimizer=optimizer, clipper=clipper,
                                loss_options=options)
        if handle is not None:
            handle.stats()  # logged every step by crma_core.loop.train_loop
        return loss

    return Variant(name, run, batches, enter=enter,
                   info={"loop": "crma_core", "crma": handle is not None, "loss": "chunked",
                         **info})


def enable_checkpointing(model) -> None:
    base = model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def release() -> None:
    """Give freed device memory back (callers ``del`` their references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- phases -------------------------------------------------------------------------------------
def bf16_phases(shape: Shape, args, ceiling: float) -> dict:
    """(a)-(d) for one shape; returns {variant name: result}."""
    device = args.device
    base = build_base(shape, device)
    saved = None
    if shape.qlora and device.startswith("cuda") and qlora_available()[0]:
        saved = args.workdir / shape.name
        base.save_pretrained(saved)  # the pristine base, reloaded 4-bit for (e)
    model, handle = wrap(base)
    switch = CRMASwitch(model, handle)
    batches = random_batches(shape.vocab, shape.batch, shape.seq, device=device)
    variants = eager_variants(("peft_eager", "recipe_eager_crma_off", "recipe_eager_crma_on"),
                              model, switch, batches, shape, args)
    interleave(variants, warmup=args.warmup, steps=args.steps, device=device)
    results = {v.name: summarize(v, shape, ceiling) for v in variants}
    if args.compile:
        compile_for_training(model, handle, backend=args.compile_backend)
        compiled = LossOptions(chunk_tokens=args.loss_chunk_tokens,
                               compile_backend=args.compile_backend)
        common = dict(batch=shape.batch, seq=shape.seq, compiled=True)
        variants = [
            recipe_variant("recipe_compiled_crma_off", model, None, batches, options=compiled,
                           enter=switch.off, **common),
            recipe_variant("recipe_compiled_crma_on", model, handle, batches, options=compiled,
                           enter=switch.on, **common),
        ]
        flex = shape.family == "gemma2" and args.gemma_flex
        if flex and device.startswith("cuda"):
            variants.append(flex_variant(model, handle, switch, batches, compiled, common))
        interleave(variants, warmup=args.warmup, steps=args.steps, device=device)
        results.update({v.name: summarize(v, shape, ceiling) for v in variants})
        if flex and not device.startswith("cuda"):
            results["recipe_compiled_crma_on_flex"] = {
                "status": "skipped", "reason": "flex attention has no CPU backward"}
    switch.on()
    handle.remove()
    torch._dynamo.reset()  # compiled code holds the layers
    del model, handle, base, variants, switch, batches
    release()
    return results, saved


def flex_variant(model, handle, switch, batches, options, common) -> Variant:
    base = model.get_base_model()

    def enter():
        switch.on()
        base.set_attn_implementation("flex_attention")

    def leave():
        base.set_attn_implementation("eager")

    variant = recipe_variant("recipe_compiled_crma_on_flex", model, handle, batches,
                             options=options, enter=enter, **common, attention="flex")
    variant.leave = leave
    return variant


def qlora_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "NF4 needs CUDA"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no QLoRA here
        return False, f"bitsandbytes not importable: {exc}"
    return True, ""


def qlora_phases(shape: Shape, args, ceiling: float, saved: Path | None) -> dict:
    """(e) and (f). On the CPU (--toy) the same steps run on an unquantized stand-in."""
    device = args.device
    ok, why = qlora_available()
    if device.startswith("cuda") and not (ok and saved is not None):
        return {"qlora": {"status": "skipped", "reason": why or "base not saved"}}
    if ok and saved is not None:
        base = load_base_model(saved, device=device, dtype="bfloat16", quantization="nf4")
        quantization, note = "nf4", None
    else:
        base, quantization = build_base(shape, device), None
        note = f"stand-in without quantization ({why}); exercises the code path only"
    model, handle = wrap(base, quantization=quantization)
    switch = CRMASwitch(model, handle)
    tag = dict(quantization=quantization, **({"note": note} if note else {}))
    batches = random_batches(shape.vocab, shape.batch, shape.seq, device=device)
    variants = eager_variants(
        ("qlora_peft_eager", "qlora_recipe_crma_off", "qlora_recipe_crma_on"),
        model, switch, batches, shape, args, **tag)
    interleave(variants, warmup=args.warmup, steps=args.steps, device=device)
    results = {v.name: summarize(v, shape, ceiling) for v in variants}
    del variants, batches
    release()
    enable_checkpointing(model)
    eager = LossOptions(chunk_tokens=args.loss_chunk_tokens)
    b, s = shape.memory_configs[0]
    small = random_batches(shape.vocab, b, s, device=device)
    common = dict(batch=b, seq=s, compiled=False, gradient_checkpointing=True, **tag)
    variants = [
        recipe_variant("qlora_gc_crma_off", model, None, small, options=eager,
                       enter=switch.off, **common),
        recipe_variant("qlora_gc_crma_on", model, handle, small, options=eager,
                       enter=switch.on, **common),
    ]
    interleave(variants, warmup=args.warmup, steps=args.steps, device=device)
    results.update({v.name: summarize(v, shape, ceiling) for v in variants})
    del variants, small
    release()
    for b, s in shape.memory_configs:  # isolated: only this run's optimizer state is alive
        batches = random_batches(shape.vocab, b, s, device=device)
        variant = recipe_variant(f"memory_qlora_gc_crma_on_{b}x{s}", model, handle, batches,
                                 options=eager, enter=switch.on, batch=b, seq=s,
                                 compiled=False, gradient_checkpointing=True, **tag)
        interleave([variant], warmup=1, steps=max(2, min(args.steps, 3)), device=device)
        results[variant.name] = summarize(variant, shape, ceiling)
        del variant, batches
        release()
    switch.on()
    handle.remove()
    del model, handle, base, switch
    release()
    return results


# -- report -------------------------------------------------------------------------------------
def run(args) -> dict:
    device = args.device
    report = new_report(args)
    ceiling, ceiling_info = matmul_ceiling(device, toy=args.toy)
    report["matmul_ceiling_tflops"] = round(ceiling / 1e12, 3)
    report["matmul_ceiling"] = ceiling_info
    if args.workdir is None:
        args.workdir = Path(tempfile.mkdtemp(prefix="crma-gpu-bench-"))
    for shape in args.shape_list:
        started = time.perf_counter()
        print(f"== {shape.name} ({shape.batch}x{shape.seq})", file=sys.stderr, flush=True)
        entry = {"batch": shape.batch, "seq": shape.seq, "family": shape.family,
                 "matmul_params": shape.matmul_params(), "variants": {}}
        report["shapes"][shape.name] = entry
        try:
            variants, saved = bf16_phases(shape, args, ceiling)
            entry["variants"].update(variants)
            checkpoint(report, entry, started, args.out)  # a later kill keeps these
            release()
            if shape.qlora:
                entry["variants"].update(qlora_phases(shape, args, ceiling, saved))
                if saved is not None:
                    shutil.rmtree(saved, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - keep the other shapes' numbers
            entry["error"] = f"{type(exc).__name__}: {exc}"
        checkpoint(report, entry, started, args.out)
        print(table(report, only=shape.name), file=sys.stderr, flush=True)
    return report


def checkpoint(report: dict, entry: dict, started: float, out: Path) -> None:
    entry["seconds"] = round(time.perf_counter() - started, 1)
    finish(report)
    write(report, out)


def new_report(args) -> dict:
    import peft
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "python": platform.python_version()}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # noqa: BLE001
        versions["bitsandbytes"] = None
    cuda = args.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name() if cuda else None,
        "status": "ok" if cuda and not args.toy else "toy: CPU smoke run, not a measurement",
        "toy": bool(args.toy),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "versions": versions,
        "settings": {"steps": args.steps, "warmup": args.warmup, "compile": args.compile,
                     "compile_backend": args.compile_backend, "lora": LORA.to_dict(),
                     "crma": CRMAConfig().to_dict(), "dtype": "bfloat16",
                     "loss_chunk_tokens": args.loss_chunk_tokens, "learning_rates": 0.0},
        "crma_overhead_pct": None,
        "speedup_vs_peft_eager": None,
        "shapes": {},
        "targets": {},
        "method": __doc__.split("\n\n")[1],
    }


def finish(report: dict) -> None:
    from bench.gpu_measure import evaluate_targets, headline

    report.update(headline(report))
    report["targets"] = evaluate_targets(report)


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def table(report: dict, only: str | None = None) -> str:
    from bench.gpu_measure import markdown_table

    return markdown_table(report, only=only)


def merge(paths: list[Path], out: Path) -> dict:
    """One report from several runs' JSON (e.g. two device calls, one per group of shapes);
    later files win for a shape they both hold."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(reports[0])
    merged["shapes"] = {}
    for report in reports:
        if report.get("device") != merged.get("device"):
            raise SystemExit(f"{paths}: runs on different devices")
        merged["shapes"].update(report["shapes"])
    merged["command"] = " + ".join(r.get("command", "") for r in reports)
    finish(merged)
    write(merged, out)
    return merged


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--merge":
        parser = argparse.ArgumentParser(prog="gpu_train.py --merge")
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--out", type=Path, required=True)
        merge_args = parser.parse_args(argv[1:])
        print(table(merge(merge_args.files, merge_args.out)))
        return
    args = parse_args(argv)
    report = run(args)
    print(table(report))
    print(json.dumps({k: report[k] for k in ("device", "crma_overhead_pct",
                                             "speedup_vs_peft_eager", "targets")}, indent=2))


if __name__ == "__main__":
    main()
