"""The TRL side of bench/vs_trl.py, run in its own process: `python bench/trl_side.py job.json`.

TRL's SFTTrainer + a peft LoRA on the job's rows, with the SFTConfig settings below (each
with why it differs from TRL's default), timed from on_train_begin to on_train_end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# What TRL's SFTConfig gets instead of its own defaults, so both sides compute the same thing.
TRL_SETTINGS = {
    "learning_rate": (2e-4, "crma_core's default (TRL's is 2e-5)"),
    "weight_decay": (0.01, "crma_core's default (TRL's is 0.0)"),
    "bf16": (False, "float32 on both sides (TRL's default is bf16)"),
    "gradient_checkpointing": (False, "off on both sides (TRL's default is on)"),
    "max_length": ("max_seq_len", "the same truncation as crma's --max-seq-len"),
    "num_train_epochs": ("epochs", "the same epochs"),
    "per_device_train_batch_size": (4, "crma_core's default batch"),
    "lr_scheduler_type": ("linear", "both default to linear decay without warm-up"),
    "max_grad_norm": (1.0, "clip at 1.0 (crma's ZClip clips at its 1.0 cap for its first "
                           "25 steps, i.e. the same rule on runs this short)"),
    "use_cpu": (True, "the same device"),
    "report_to": ("none", "no trackers"),
    "save_strategy": ("no", "the adapter is saved once at the end, outside the timing"),
    "dataloader_num_workers": (0, "both load data in the training process"),
}


def trl_command(job: Path) -> list[str]:
    """The command that runs the TRL side for a job file (see ``run``)."""
    return [sys.executable, str(Path(__file__).resolve()), str(job)]


def run(job_path: str) -> None:
    """SFTTrainer + peft LoRA for a job file, then print {"train_s", "train_cpu_s",
    "save_s", "save_cpu_s", "tokens", "steps", "same_token_ids"} as the last stdout line."""
    job = json.loads(Path(job_path).read_text())
    import torch

    torch.set_num_threads(job["threads"])
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    times: dict[str, tuple[float, float]] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            times["begin"] = (time.perf_counter(), time.process_time())

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            times["end"] = (time.perf_counter(), time.process_time())

    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"], local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32,
                                                 local_files_only=True)
    config = SFTConfig(output_dir=job["out"], seed=job["seed"], logging_steps=10,
                       **{k: v for k, (v, _) in TRL_SETTINGS.items()
                          if k not in ("max_length", "num_train_epochs")},
                       max_length=job["max_seq_len"], num_train_epochs=job["epochs"])
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    lines = Path(job["train"]).read_text().splitlines()
    dataset = Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])
    result = trainer.train()
    saved, saved_cpu = time.perf_counter(), time.process_time()
    trainer.model.save_pretrained(job["out"])
    save_s, save_cpu_s = time.perf_counter() - saved, time.process_time() - saved_cpu
    ids = [list(x) for x in trainer.train_dataset["input_ids"]]
    from crma_core.data import load_examples

    ours, _ = load_examples(Path(job["train"]), tokenizer, max_seq_len=job["max_seq_len"])
    print(json.dumps({"train_s": times["end"][0] - times["begin"][0],
                      "train_cpu_s": times["end"][1] - times["begin"][1],
                      "save_s": save_s, "save_cpu_s": save_cpu_s,
                      "tokens": sum(len(x) for x in ids) * job["epochs"],
                      "steps": result.global_step,
                      "same_token_ids": sorted(ids) == sorted(e.input_ids for e in ours)}))


if __name__ == "__main__":
    run(sys.argv[1])
