// The fields of the job and continual-run forms, one entry per request field (the names
// are the paths of JobCreate / ContinualRunCreate in the API). A new hyperparameter or
// adapter option is one more entry in HYPERPARAMETERS or ADAPTER.

import { bytes, count, usd } from "../format.js";
import * as api from "../api.js";

export const HYPERPARAMETERS = [
  { name: "hyperparameters.n_epochs", label: "Epochs", type: "number", min: 1, max: 50, step: 1,
    placeholder: "auto", help: "Passes over the training file (1–50). Empty: chosen from the file size." },
  { name: "hyperparameters.batch_size", label: "Batch size", type: "number", min: 1, max: 256, step: 1,
    placeholder: "auto", help: "Examples per optimizer step (1–256)." },
  { name: "hyperparameters.learning_rate_multiplier", label: "Learning-rate multiplier", type: "number",
    min: 0, max: 10, step: "any", placeholder: "auto",
    help: "Scales every base rate: LoRA's 2e-4 and CRMA's three." },
  { name: "hyperparameters.max_steps", label: "Max steps", type: "number", min: 1, max: 1000000, step: 1,
    placeholder: "auto", help: "Stop after this many optimizer steps (per stage in a continual run). Empty: every epoch." },
  { name: "hyperparameters.max_seq_len", label: "Max sequence length", type: "number", min: 32, max: 131072, step: 1,
    placeholder: "1024", help: "Tokens per training row; longer examples are cut." },
];

// The rest of the training recipe (fine-tuning jobs; a continual run refuses n_checkpoints
// and train_on_inputs). Bounds per model: GET /v1/models/{id} → limits.
export const RECIPE = [
  { name: "hyperparameters.lr_scheduler_type", label: "Learning-rate schedule", type: "select", placeholder: "auto (linear)",
    options: [{ value: "linear", label: "linear decay to 0" }, { value: "cosine", label: "cosine decay to 0" },
      { value: "constant", label: "constant" }] },
  { name: "hyperparameters.warmup_ratio", label: "Warm-up ratio", type: "number", min: 0, max: 0.5, step: "any",
    placeholder: "0", help: "Share of the steps over which the rate rises from 0." },
  { name: "hyperparameters.weight_decay", label: "Weight decay", type: "number", min: 0, max: 1, step: "any", placeholder: "0.01" },
  { name: "hyperparameters.max_grad_norm", label: "Max gradient norm", type: "number", min: 0, max: 100, step: "any",
    placeholder: "1", help: "Adaptive clipping never above this norm; 0 turns clipping off." },
  { name: "hyperparameters.n_evals", label: "Evaluations", type: "number", min: 0, max: 100, step: 1,
    placeholder: "auto", help: "Of the validation file, evenly spaced (auto: 10 with a validation file)." },
  { name: "hyperparameters.n_checkpoints", label: "Checkpoints", type: "number", min: 0, max: 20, step: 1,
    placeholder: "auto", help: "Evenly spaced, the last at the end (auto: one per epoch)." },
  { name: "hyperparameters.packing", label: "Pack short examples into full rows", type: "checkbox", value: false,
    help: "Each example still attends only to itself; fewer, fuller rows train faster." },
  { name: "hyperparameters.train_on_inputs", label: "Train on the prompts too", type: "checkbox", value: false,
    help: "Off: the loss covers only the assistant's turns (or the completion)." },
  { name: "adapter.lora_dropout", label: "LoRA dropout", type: "number", min: 0, max: 0.5, step: "any", placeholder: "0" },
  { name: "adapter.lora_trainable_modules", label: "LoRA modules", type: "text", placeholder: "all-linear",
    help: "all-linear, or a comma-separated list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj." },
];

export const CRMA_RATES = [
  { name: "hyperparameters.crma_learning_rate", label: "CRMA read/write rate", type: "number", min: 0, max: 0.01, step: "any",
    placeholder: "5e-6", help: "Far below LoRA's: a CRMA that moves fast undoes what earlier domains' LoRAs adapted to." },
  { name: "hyperparameters.crma_mixing_learning_rate", label: "CRMA mixing rate", type: "number", min: 0, max: 0.1, step: "any",
    placeholder: "1e-3" },
  { name: "hyperparameters.crma_gate_learning_rate", label: "CRMA gate rate", type: "number", min: 0, max: 0.01, step: "any",
    placeholder: "1e-4" },
];

export const ADAPTER = [
  { name: "adapter.crma", label: "Attach CRMA next to LoRA", type: "checkbox", value: true,
    help: "Off: a plain LoRA." },
  { name: "adapter.n_streams", label: "CRMA streams", type: "number", min: 2, max: 16, step: 1, placeholder: "4",
    help: "n: the mixing matrix is n × n." },
  { name: "adapter.rank", label: "CRMA rank", type: "number", min: 1, max: 8, step: 1, placeholder: "1" },
  { name: "adapter.lora_r", label: "LoRA rank", type: "number", min: 1, max: 256, step: 1, placeholder: "16" },
  { name: "adapter.lora_alpha", label: "LoRA alpha", type: "number", min: 1, max: 1024, step: 1, placeholder: "32" },
  { name: "adapter.quantization", label: "Quantization", type: "select", placeholder: "none (full precision)",
    options: [{ value: "nf4", label: "NF4 (QLoRA, CUDA workers)" }] },
];

export const ADVANCED = [
  { name: "seed", label: "Seed", type: "number", min: 0, max: 2147483647, step: 1, placeholder: "random",
    help: "Same seed and data: the same run." },
  { name: "metadata", label: "Metadata", type: "metadata", placeholder: "team=search\nticket=42",
    help: "Up to 16 key=value lines, kept with the job." },
];

/** Select options for the base models (available ones first) and processed files. */
export async function loadChoices(signal) {
  const [models, files] = await Promise.all([
    api.get("/v1/models", { signal }),
    api.listAll("/v1/files", { signal, query: { purpose: "fine-tune" } }),
  ]);
  const modelOptions = [...models.data]
    .sort((a, b) => Number(b.available) - Number(a.available))
    .map((m) => ({
      value: m.id,
      label: `${m.display_name || m.id} · ${usd(m.price_per_1m_tokens)}/1M${m.available ? "" : " (not installed)"}`,
    }));
  const fileOptions = files.filter((f) => f.status === "processed").map((f) => ({
    value: f.id,
    label: `${f.filename} · ${count(f.example_count)} examples · ${bytes(f.bytes)}`,
  }));
  return { models: models.data, modelOptions, files, fileOptions };
}

/** The `adapter` object is sent only when a field differs from the form's defaults. */
export function pruneAdapter(body) {
  const adapter = body.adapter;
  if (adapter && adapter.crma === true && Object.keys(adapter).length === 1) delete body.adapter;
  return body;
}
