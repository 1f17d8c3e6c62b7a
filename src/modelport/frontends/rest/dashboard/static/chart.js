// Small SVG line charts for the dashboard: one chart per metric, one line per model version,
// time on the x axis. Everything is built with DOM calls (no markup strings), and colours come
// from the stylesheet's line-* classes.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 320;
const HEIGHT = 132;
const LEFT = 44;
const RIGHT = 8;
const TOP = 8;
const BOTTOM = 20;
const PLOT_W = WIDTH - LEFT - RIGHT;
const PLOT_H = HEIGHT - TOP - BOTTOM;

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

function text(x, y, content, anchor) {
  const node = svg("text", { x, y, "text-anchor": anchor, class: "tick" });
  node.textContent = content;
  return node;
}

// The smallest of 1, 2, 5 times a power of ten that is at least `value` (0 gives 1).
export function niceCeiling(value) {
  if (!(value > 0)) {
    return 1;
  }
  const power = 10 ** Math.floor(Math.log10(value));
  for (const factor of [1, 2, 5, 10]) {
    if (factor * power >= value * (1 - 1e-9)) {
      return factor * power;
    }
  }
  return 10 * power;
}

// An SVG path through the points from `start` on, broken where a value is missing (null:
// nothing happened then).
function pathOf(times, values, start, x, y) {
  let d = "";
  let drawing = false;
  for (let i = 0; i < times.length; i += 1) {
    const value = values[i];
    if (times[i] < start || value === null || value === undefined) {
      drawing = false;
      continue;
    }
    // a segment starts with a zero-length stroke: with round caps a lone point is a dot
    const at = `${x(times[i]).toFixed(1)} ${y(value).toFixed(1)}`;
    d += drawing ? `L${at}` : `M${at}h0`;
    drawing = true;
  }
  return d;
}

function ago(seconds) {
  if (seconds === 0) {
    return "now";
  }
  return seconds < 60 ? `-${Math.round(seconds)}s` : `-${Math.round(seconds / 60)}m`;
}

// Seconds between the x axis' ticks: 5 min over 15 min, 1 min over 5, 20 s over 1.
function tickStep(span) {
  return span >= 900 ? 300 : span >= 300 ? 60 : 20;
}

export class LineChart {
  // `title`: shown above the chart; `format(value)`: the y axis' tick labels.
  constructor(title, format) {
    this.format = format;
    this.element = document.createElement("figure");
    this.element.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    this.svg = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": title,
    });
    this.element.append(caption, this.svg);
  }

  // `lines`: [{cls, times, values}], values in display units (null for a gap); the x axis
  // runs from `end - span` to `end` (Unix seconds).
  draw(lines, end, span) {
    const start = end - span;
    let top = 0;
    for (const line of lines) {
      for (let i = 0; i < line.times.length; i += 1) {
        const value = line.values[i];
        if (line.times[i] >= start && value !== null && value > top) {
          top = value;
        }
      }
    }
    top = niceCeiling(top);
    const x = (t) => LEFT + ((t - start) / span) * PLOT_W;
    const y = (v) => TOP + PLOT_H - (Math.min(v, top) / top) * PLOT_H;
    const parts = [];
    for (const fraction of [0, 0.5, 1]) {
      const level = top * fraction;
      const at = y(level);
      parts.push(svg("line", { x1: LEFT, x2: LEFT + PLOT_W, y1: at, y2: at, class: "grid" }));
      parts.push(text(LEFT - 4, at + 3, this.format(level), "end"));
    }
    const every = tickStep(span);
    for (let before = Math.floor(span / every) * every; before >= 0; before -= every) {
      const anchor = before === span ? "start" : before === 0 ? "end" : "middle";
      parts.push(text(x(end - before), HEIGHT - 6, ago(before), anchor));
    }
    for (const line of lines) {
      const d = pathOf(line.times, line.values, start, x, y);
      if (d) {
        parts.push(svg("path", { d, class: `line ${line.cls}` }));
      }
    }
    this.svg.replaceChildren(...parts);
  }
}
