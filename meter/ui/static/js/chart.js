// The daily usage chart (uPlot, vendored). Heights are plotted from the API's strings; the
// values shown to people stay the strings themselves.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { credits } from "./credits.js";
import { h } from "./dom.js";

/** A bar chart of credits per UTC day from a DailyReport's `days`. */
export function dailyChart(days, testid = "daily-chart") {
  const box = h("div", { class: "chart", "data-testid": testid });
  if (!days.length) return box;
  const xs = days.map((d) => Date.parse(d.day + "T00:00:00Z") / 1000);
  const labels = days.map((d) => d.totals.credits);
  const ys = labels.map((t) => Number(t));
  const width = Math.max(320, Math.min(1150, (document.querySelector("main")?.clientWidth || 900) - 30));
  const opts = {
    width, height: 220,
    scales: { x: { time: true } },
    axes: [{}, { size: 70 }],
    legend: { show: true },
    series: [
      { label: "Day", value: (u, v) => (v == null ? "—" : new Date(v * 1000).toISOString().slice(0, 10)) },
      {
        label: "Credits", stroke: "#2f6fd6", fill: "rgba(47,111,214,.25)",
        paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false },
        value: (u, v, si, i) => (i == null ? "—" : credits(labels[i])),
      },
    ],
  };
  requestAnimationFrame(() => new uPlot(opts, [xs, ys], box));
  return box;
}
