// Line charts over training steps (uPlot, vendored: vendor/uplot/VENDORED.md). Colours come
// from the CSS custom properties, so a chart follows the light/dark theme; it is rebuilt
// when the theme changes and resized with its container.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const darkScheme = window.matchMedia("(prefers-color-scheme: dark)");

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Whole steps only on the x axis (uPlot would otherwise tick at 1.5, 2.5, ...).
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000];

function axis(format) {
  return {
    stroke: cssVar("--text-muted"),
    grid: { stroke: cssVar("--chart-grid"), width: 1 },
    ticks: { stroke: cssVar("--chart-grid"), width: 1 },
    font: `12px ${cssVar("--font-sans") || "system-ui"}`,
    values: format ? (_, ticks) => ticks.map(format) : undefined,
  };
}

/** A chart of one or more series against the step.
 * series: [{label, color: "--chart-1", format?, points?}]; data arrives through setData. */
export class StepChart {
  constructor({ title, series, yFormat = null, height = 220, description = "" }) {
    this.series = series;
    this.yFormat = yFormat;
    this.height = height;
    this.data = [[], ...series.map(() => [])];
    this.host = h("div", { class: "chart-host" });
    this.summary = h("span", { class: "chart-summary", "aria-live": "off" });
    this.summaryText = "";
    const legend = h("span", { class: "chart-legend" }, series.map((s) => {
      const swatch = h("span", { class: "chart-swatch", "aria-hidden": "true" });
      swatch.style.background = `var(${s.color})`;
      return h("span", { class: "chart-key" }, swatch, s.label);
    }));
    this.empty = h("p", { class: "chart-empty" }, "Waiting for the first training step…");
    this.element = h("figure", { class: "chart", dataset: { points: "0" }, "aria-label": `${title} chart` },
      h("figcaption", {}, h("span", { class: "chart-title" }, title), legend, this.summary),
      description ? h("p", { class: "visually-hidden" }, description) : null,
      this.empty, this.host);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.host);
    this.onScheme = () => this.rebuild();
    darkScheme.addEventListener("change", this.onScheme);
  }

  options(width) {
    return {
      width, height: this.height,
      scales: { x: { time: false } },
      cursor: { drag: { x: true, y: false }, points: { size: 6 } },
      // The values under the cursor go to the caption (onCursor), not to uPlot's legend.
      legend: { show: false },
      hooks: { setCursor: [(plot) => this.onCursor(plot)] },
      axes: [{ ...axis(null), label: "step", labelSize: 18, incrs: STEP_INCREMENTS },
        { ...axis(this.yFormat), size: 62 }],
      series: [
        { label: "step" },
        ...this.series.map((s) => ({
          label: s.label,
          stroke: cssVar(s.color),
          width: 2,
          spanGaps: true,
          points: { show: s.points ?? undefined, size: 5, fill: cssVar(s.color) },
        })),
      ],
    };
  }

  rebuild() {
    this.plot?.destroy();
    this.plot = null;
    this.resize();
  }

  resize() {
    const width = Math.floor(this.host.clientWidth);
    if (!width || !this.data[0].length) return;
    if (!this.plot) this.plot = new uPlot(this.options(width), this.data, this.host);
    else if (Math.abs(this.plot.width - width) > 1) this.plot.setSize({ width, height: this.height });
  }

  /** xs: steps (ascending); ys: one array per series, null where a series has no value. */
  setData(xs, ...ys) {
    this.data = [xs, ...ys];
    this.element.dataset.points = String(xs.length);
    this.empty.hidden = xs.length > 0;
    if (this.plot) this.plot.setData(this.data);
    else this.resize();
  }

  setSummary(text) {
    this.summaryText = text;
    if (!this.hovering) this.summary.textContent = text;
  }

  onCursor(plot) {
    const i = plot.cursor.idx;
    this.hovering = i !== null && i !== undefined;
    if (!this.hovering) {
      this.summary.textContent = this.summaryText;
      return;
    }
    const format = this.yFormat || String;
    const values = this.series.map((s, k) => {
      const v = plot.data[k + 1][i];
      return v === null || v === undefined ? null : `${s.label} ${format(v)}`;
    }).filter(Boolean);
    this.summary.textContent = `step ${plot.data[0][i]}: ${values.join(" · ")}`;
  }

  destroy() {
    this.resizer.disconnect();
    darkScheme.removeEventListener("change", this.onScheme);
    this.plot?.destroy();
  }
}
