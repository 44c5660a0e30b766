// The job page's three live charts (loss: train + validation; learning rate; gradient norm
// before clipping) over one TrainingMetrics, redrawn at most once per animation frame.

import { StepChart } from "./charts.js";
import { h } from "./dom.js";
import { decimal, scientific } from "./format.js";
import { TrainingMetrics } from "./metrics.js";

export class JobCharts {
  constructor() {
    this.metrics = new TrainingMetrics();
    this.loss = new StepChart({
      title: "Loss", height: 260, yFormat: (v) => decimal(v, 3),
      description: "Training loss per optimizer step and validation loss at each evaluation.",
      series: [{ label: "train", color: "--chart-1" }, { label: "validation", color: "--chart-2", points: true }],
    });
    this.lr = new StepChart({
      title: "Learning rate", height: 180, yFormat: scientific,
      series: [{ label: "learning rate", color: "--chart-3" }],
    });
    this.grad = new StepChart({
      title: "Gradient norm", height: 180, yFormat: (v) => decimal(v, 2),
      description: "Global gradient norm before clipping.",
      series: [{ label: "grad norm", color: "--chart-4" }],
    });
    this.element = h("div", { class: "charts" },
      h("div", { class: "chart-card card wide", dataset: { chart: "loss" } }, this.loss.element),
      h("div", { class: "chart-card card", dataset: { chart: "learning-rate" } }, this.lr.element),
      h("div", { class: "chart-card card", dataset: { chart: "grad-norm" } }, this.grad.element));
    this.pending = false;
  }

  /** Feed any job event; charts update on the next frame when it carried metrics. */
  add(event) {
    if (!this.metrics.add(event) || this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const m = this.metrics;
    this.loss.setData(...m.series("train_loss", "valid_loss"));
    this.lr.setData(...m.series("learning_rate"));
    this.grad.setData(...m.series("grad_norm"));
    const latest = m.latest;
    if (latest) {
      const [validSteps, validValues] = m.series("valid_loss");
      const valid = validValues.length ? ` · validation ${decimal(validValues[validValues.length - 1], 3)} (step ${validSteps[validSteps.length - 1]})` : "";
      this.loss.setSummary(`train ${decimal(latest.train_loss, 3)} at step ${latest.step}${valid}`);
      this.lr.setSummary(scientific(latest.learning_rate));
      this.grad.setSummary(`${decimal(latest.grad_norm, 2)}${latest.clipped ? " (clipped)" : ""}`);
    }
  }

  destroy() {
    this.loss.destroy();
    this.lr.destroy();
    this.grad.destroy();
  }
}
