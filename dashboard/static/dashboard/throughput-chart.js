/* A small line chart on a <canvas>: two series (received, indexed) over time, with axes and a hover readout. */
(function () {
  "use strict";

  const TIME_STEPS = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];
  const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });
  const precise = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  /* A round step (1, 2 or 5 times a power of ten) that splits 0..peak into at most `count` intervals. */
  function niceStep(peak, count) {
    const rough = peak / count;
    const magnitude = Math.pow(10, Math.floor(Math.log10(rough)));
    for (const factor of [1, 2, 5, 10]) {
      if (factor * magnitude >= rough) return factor * magnitude;
    }
    return 10 * magnitude;
  }

  function clock(seconds, withSeconds) {
    const date = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    const hm = pad(date.getHours()) + ":" + pad(date.getMinutes());
    return withSeconds ? hm + ":" + pad(date.getSeconds()) : hm;
  }

  class ThroughputChart {
    constructor(canvas, tip) {
      this.canvas = canvas;
      this.tip = tip;
      this.points = [];
      this.stepSeconds = 1;
      this.hoverX = null;
      new ResizeObserver(() => this.draw()).observe(canvas);
      canvas.addEventListener("mousemove", (event) => {
        this.hoverX = event.offsetX;
        this.draw();
      });
      canvas.addEventListener("mouseleave", () => {
        this.hoverX = null;
        this.draw();
      });
    }

    /* points: [[epochSeconds, received/s, indexed/s], ...] in time order. */
    setData(points, stepSeconds) {
      this.points = points;
      this.stepSeconds = stepSeconds;
      const active = points.filter((p) => p[1] > 0 || p[2] > 0).length;
      this.canvas.dataset.points = String(active);
      const last = points[points.length - 1];
      this.canvas.setAttribute(
        "aria-label",
        last
          ? `Throughput chart, ${active} points with traffic; latest: received ${precise.format(last[1])}/s, indexed ${precise.format(last[2])}/s`
          : "Throughput chart, no data yet",
      );
      this.draw();
    }

    draw() {
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth;
      const height = canvas.clientHeight;
      if (!width || !height) return;
      if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);

      const style = getComputedStyle(document.documentElement);
      const color = (name) => style.getPropertyValue(name).trim();
      const fontSize = Math.max(11, Math.round(parseFloat(getComputedStyle(canvas).fontSize) * 0.8));
      ctx.font = `${fontSize}px system-ui, sans-serif`;

      const points = this.points;
      const peak = points.reduce((max, p) => Math.max(max, p[1], p[2]), 0);
      // An empty chart still gets whole-number ticks.
      const step = peak > 0 ? niceStep(peak * 1.05, 4) : 1;
      const ticks = peak > 0 ? Math.ceil((peak * 1.05) / step) : 4;
      const top = step * ticks;
      const labels = Array.from({ length: ticks + 1 }, (_, i) => compact.format(step * i));
      const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 10;
      const right = 8;
      const topPad = 8;
      const bottom = fontSize + 12;
      const plotW = Math.max(width - left - right, 1);
      const plotH = Math.max(height - topPad - bottom, 1);

      const t0 = points.length ? points[0][0] : 0;
      const t1 = points.length ? points[points.length - 1][0] : 1;
      const span = Math.max(t1 - t0, 1);
      const x = (t) => left + ((t - t0) / span) * plotW;
      const y = (v) => topPad + plotH - (v / top) * plotH;

      // Horizontal grid and value labels.
      ctx.strokeStyle = color("--grid");
      ctx.fillStyle = color("--muted");
      ctx.lineWidth = 1;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let i = 0; i <= ticks; i++) {
        const gy = Math.round(y(step * i)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(left, gy);
        ctx.lineTo(left + plotW, gy);
        ctx.stroke();
        ctx.fillText(labels[i], left - 6, gy);
      }

      // Time labels on round clock times, as many as fit.
      if (points.length) {
        const fit = Math.max(Math.floor(plotW / 80), 2);
        const step = TIME_STEPS.find((s) => span / s <= fit) || TIME_STEPS[TIME_STEPS.length - 1];
        ctx.textAlign = "center";
        ctx.textBaseline = "top";
        for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
          const label = clock(t, step < 60);
          const half = ctx.measureText(label).width / 2;
          // Labels that would stick out of the plot are left out rather than clipped.
          if (x(t) - half >= left && x(t) + half <= width) ctx.fillText(label, x(t), topPad + plotH + 6);
        }
      }
      if (!points.length) return;

      const series = [
        { index: 1, stroke: color("--received"), dash: [] },
        { index: 2, stroke: color("--indexed"), dash: [6, 4] },
      ];
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      for (const s of series) {
        ctx.strokeStyle = s.stroke;
        ctx.setLineDash(s.dash);
        ctx.beginPath();
        points.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[s.index])) : ctx.moveTo(x(p[0]), y(p[s.index]))));
        ctx.stroke();
      }
      ctx.setLineDash([]);

      if (this.hoverX === null || this.hoverX < left) {
        this.tip.hidden = true;
        return;
      }
      const at = t0 + ((this.hoverX - left) / plotW) * span;
      const nearest = points.reduce((best, p) => (Math.abs(p[0] - at) < Math.abs(best[0] - at) ? p : best));
      const hx = Math.round(x(nearest[0])) + 0.5;
      ctx.strokeStyle = color("--muted");
      ctx.beginPath();
      ctx.moveTo(hx, topPad);
      ctx.lineTo(hx, topPad + plotH);
      ctx.stroke();
      this.tip.textContent =
        `${clock(nearest[0], this.stepSeconds < 60)} · received ${precise.format(nearest[1])}/s` +
        ` · indexed ${precise.format(nearest[2])}/s`;
      this.tip.hidden = false;
      const tipWidth = this.tip.offsetWidth;
      this.tip.style.left = `${Math.min(Math.max(hx - tipWidth / 2, 0), width - tipWidth)}px`;
    }
  }

  window.ThroughputChart = ThroughputChart;
})();
