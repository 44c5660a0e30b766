// Training metrics gathered from a job's `metrics` events (worker/training.py writes one per
// optimizer step with train_loss, learning_rate, grad_norm, ..., and one per evaluation
// with valid_loss), keyed by step so a replayed or repeated event changes nothing.

export const METRIC_FIELDS = ["train_loss", "valid_loss", "learning_rate", "grad_norm"];

export class TrainingMetrics {
  constructor() {
    this.byStep = new Map();
    this.totalSteps = null;
    this.latest = null; // the newest step's training figures
  }

  /** Takes any job event; returns true when it carried metrics. */
  add(event) {
    const data = event && event.type === "metrics" ? event.data : null;
    if (!data || typeof data.step !== "number") return false;
    const row = this.byStep.get(data.step) || {};
    for (const field of METRIC_FIELDS) {
      if (typeof data[field] === "number" && Number.isFinite(data[field])) row[field] = data[field];
    }
    if (typeof data.clipped === "boolean") row.clipped = data.clipped;
    this.byStep.set(data.step, row);
    if (typeof data.total_steps === "number") this.totalSteps = data.total_steps;
    if (typeof data.train_loss === "number" && (!this.latest || data.step >= this.latest.step)) {
      this.latest = { ...data };
    }
    return true;
  }

  /** [steps, values of field 1, values of field 2, ...] for the steps where any of the
   * fields has a value (null where one is missing). */
  series(...fields) {
    const steps = [...this.byStep.keys()].filter((step) => fields.some((f) => f in this.byStep.get(step)));
    steps.sort((a, b) => a - b);
    return [steps, ...fields.map((f) => steps.map((step) => this.byStep.get(step)[f] ?? null))];
  }

  get trainedSteps() {
    let n = 0;
    for (const row of this.byStep.values()) if ("train_loss" in row) n += 1;
    return n;
  }
}
