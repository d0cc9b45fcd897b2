//! The `--plot FILE.svg` output: one self-contained SVG (no CSS, no script) with two
//! panels, New-Order throughput per second of the measurement window and the response
//! time CDF of each transaction type on a log-scale axis.
//!
//! The SVG is written by hand to avoid a plotting dependency. Every coordinate goes
//! through [`num`], so a NaN or infinity in the inputs becomes 0 rather than reaching
//! the file, and every piece of caller text goes through [`xml_escape`].

use crate::metrics::Stats;
use crate::transactions::TxnKind;
use anyhow::Context;
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::path::Path;

pub struct PlotInput<'a> {
    /// Run label, drawn as the subtitle (e.g. "2 warehouses, 1 node, embedded").
    pub title: &'a str,
    /// tpmC for each second of the measurement window.
    pub timeline: &'a [f64],
    pub stats: &'a Stats,
}

const WIDTH: f64 = 960.0;
const HEADER_H: f64 = 64.0;
const PANEL_H: f64 = 360.0;
const MARGIN_L: f64 = 80.0;
const MARGIN_R: f64 = 30.0;
/// Room above a plot area for the panel title, below it for tick labels and axis title.
const PAD_TOP: f64 = 36.0;
const PAD_BOTTOM: f64 = 56.0;
const MAX_CDF_POINTS: usize = 200;
/// A CDF point closer than this (in pixels, Manhattan) to the last kept one is dropped.
const CDF_MIN_STEP_PX: f64 = 5.0;
/// One color per transaction type, in [`TxnKind::ALL`] order.
const COLORS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
/// Histograms hold whole microseconds, so nothing is below 1 µs.
const MIN_MS: f64 = 0.001;

/// The drawing area of one panel, in pixels (y grows downwards).
struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Frame {
    fn panel(index: usize) -> Frame {
        let top = HEADER_H + index as f64 * PANEL_H;
        Frame {
            x0: MARGIN_L,
            y0: top + PAD_TOP,
            w: WIDTH - MARGIN_L - MARGIN_R,
            h: PANEL_H - PAD_TOP - PAD_BOTTOM,
        }
    }

    fn bottom(&self) -> f64 {
        self.y0 + self.h
    }

    fn right(&self) -> f64 {
        self.x0 + self.w
    }
}

pub fn render_svg(p: &PlotInput) -> String {
    let height = HEADER_H + 2.0 * PANEL_H;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">"##,
        w = num(WIDTH),
        h = num(height),
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"##,
        num(WIDTH),
        num(height)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="26" text-anchor="middle" font-size="18" font-weight="bold">TPC-C run</text>"##,
        num(WIDTH / 2.0)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="46" text-anchor="middle" font-size="13" fill="#444">{}</text>"##,
        num(WIDTH / 2.0),
        xml_escape(p.title)
    );
    draw_throughput(&mut s, &Frame::panel(0), p.timeline);
    draw_latency_cdfs(&mut s, &Frame::panel(1), p.stats);
    s.push_str("</svg>\n");
    s
}

pub fn write_svg(path: &Path, p: &PlotInput) -> anyhow::Result<()> {
    std::fs::write(path, render_svg(p)).with_context(|| format!("writing plot {}", path.display()))
}

/// Panel 1: tpmC per second as a line, the window's average as a dashed line.
fn draw_throughput(s: &mut String, f: &Frame, timeline: &[f64]) {
    let values: Vec<f64> = timeline
        .iter()
        .map(|&v| if v.is_finite() { v.max(0.0) } else { 0.0 })
        .collect();
    let n = values.len();
    let avg = if n == 0 {
        0.0
    } else {
        values.iter().sum::<f64>() / n as f64
    };
    let peak = values.iter().copied().fold(0.0, f64::max);
    // The x axis ends at the window's last second so the line spans the panel; ticks are
    // whole seconds.
    let x_max = n.max(1) as f64;
    let x_step = nice_axis(x_max).1.max(1.0);
    let (y_max, y_step) = nice_axis(peak.max(avg) * 1.05);
    let px = |t: f64| f.x0 + t / x_max * f.w;
    let py = |v: f64| f.bottom() - v / y_max * f.h;

    panel_title(
        s,
        f,
        "Throughput: New-Orders per minute (tpmC), second by second",
    );
    let mut y = 0.0;
    while y <= y_max + y_step * 1e-6 {
        grid_line_y(s, f, py(y), &fmt_tick(y, y_step));
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_max + x_step * 1e-6 {
        tick_x(s, f, px(x), &fmt_tick(x, x_step));
        x += x_step;
    }
    axes(s, f, "seconds", "tpmC");

    if n == 0 {
        no_data(s, f, "no throughput samples");
        return;
    }
    // Each value is the second ending at x = i + 1.
    let pts: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (px(i as f64 + 1.0), py(v)))
        .collect();
    polyline(s, &pts, "#1f77b4", "");
    if n == 1 {
        let _ = writeln!(
            s,
            r##"<circle cx="{}" cy="{}" r="3" fill="#1f77b4"/>"##,
            num(pts[0].0),
            num(pts[0].1)
        );
    }
    let ya = py(avg);
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6,4"/>"##,
        num(f.x0),
        num(f.right()),
        y = num(ya)
    );
    // Above the plot, right-aligned, so the label never covers the line.
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#d62728">- - average {} tpmC</text>"##,
        num(f.right()),
        num(f.y0 - 14.0),
        num_fixed(avg, 0)
    );
}

/// Panel 2: one CDF line per transaction type with samples, log-scale milliseconds.
fn draw_latency_cdfs(s: &mut String, f: &Frame, stats: &Stats) {
    let curves: Vec<(TxnKind, Vec<(f64, f64)>)> = TxnKind::ALL
        .into_iter()
        .map(|k| (k, cdf_points(&stats.txns[k.index()].hist)))
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let lo = curves
        .iter()
        .map(|(_, p)| p[0].0)
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .map(|(_, p)| p[p.len() - 1].0)
        .fold(0.0, f64::max);
    let (lo_dec, hi_dec) = if curves.is_empty() {
        (-1, 3)
    } else {
        decade_range(lo, hi)
    };
    let span = f64::from(hi_dec - lo_dec);
    let px = |ms: f64| {
        let d = ms
            .max(MIN_MS)
            .log10()
            .clamp(f64::from(lo_dec), f64::from(hi_dec));
        f.x0 + (d - f64::from(lo_dec)) / span * f.w
    };
    let py = |pct: f64| f.bottom() - pct / 100.0 * f.h;

    panel_title(s, f, "Response time CDF per transaction type");
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        grid_line_y(s, f, py(pct), &format!("{}%", num_fixed(pct, 0)));
    }
    for d in lo_dec..=hi_dec {
        let x = f.x0 + f64::from(d - lo_dec) / span * f.w;
        let label = if d < 0 {
            num_fixed(10f64.powi(d), (-d) as usize)
        } else {
            num_fixed(10f64.powi(d), 0)
        };
        tick_x(s, f, x, &label);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#e5e5e5"/>"##,
            num(f.y0),
            num(f.bottom()),
            x = num(x)
        );
    }
    axes(s, f, "response time (ms, log scale)", "cumulative %");

    if curves.is_empty() {
        no_data(s, f, "no transactions recorded");
        return;
    }
    for (k, pts) in &curves {
        let pixels: Vec<(f64, f64)> = pts.iter().map(|&(ms, pct)| (px(ms), py(pct))).collect();
        polyline(
            s,
            &downsample(&pixels, CDF_MIN_STEP_PX, MAX_CDF_POINTS),
            COLORS[k.index()],
            &format!(r##" data-txn="{}""##, k.name()),
        );
    }
    // Legend in the lower right, where CDFs leave the plot empty.
    let labels: Vec<String> = curves
        .iter()
        .map(|(k, _)| {
            let t = &stats.txns[k.index()];
            format!(
                "{} (n={}, p90 {} ms)",
                k.name(),
                t.hist.len(),
                fmt_ms(t.hist.value_at_quantile(0.9) as f64 / 1000.0)
            )
        })
        .collect();
    let row_h = 18.0;
    // About 7 px per character at font-size 12, plus the color swatch.
    let widest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let box_w = 52.0 + 7.0 * widest as f64;
    let box_h = row_h * curves.len() as f64 + 10.0;
    let bx = f.right() - box_w - 10.0;
    let by = f.bottom() - box_h - 10.0;
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="white" fill-opacity="0.9" stroke="#999"/>"##,
        num(bx),
        num(by),
        num(box_w),
        num(box_h)
    );
    for (i, ((k, _), label)) in curves.iter().zip(&labels).enumerate() {
        let y = by + 14.0 + i as f64 * row_h;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2.5"/>"##,
            num(bx + 10.0),
            num(bx + 34.0),
            COLORS[k.index()],
            y = num(y - 4.0)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}">{}</text>"##,
            num(bx + 42.0),
            num(y),
            xml_escape(label)
        );
    }
}

/// The CDF of a histogram of microseconds as (milliseconds, cumulative %) points, starting
/// at 0% on the smallest value; empty for an empty histogram.
fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    let mut pts = Vec::new();
    let mut cum = 0u64;
    for v in h.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if pts.is_empty() {
            pts.push((ms, 0.0));
        }
        cum += v.count_since_last_iteration();
        pts.push((ms, cum as f64 * 100.0 / total as f64));
    }
    pts
}

/// Keeps the first and last point and any point at least `min_step` pixels from the last
/// kept one; if that still leaves more than `max`, strides evenly down to `max`.
fn downsample(pts: &[(f64, f64)], min_step: f64, max: usize) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::new();
    for (i, &p) in pts.iter().enumerate() {
        let last = i + 1 == pts.len();
        match kept.last() {
            Some(&q) if !last && (p.0 - q.0).abs() + (p.1 - q.1).abs() < min_step => {}
            _ => kept.push(p),
        }
    }
    if kept.len() <= max || max < 2 {
        return kept;
    }
    (0..max)
        .map(|i| kept[i * (kept.len() - 1) / (max - 1)])
        .collect()
}

/// The decades (powers of ten, in ms) covering `[lo, hi]`, at least one decade wide.
fn decade_range(lo: f64, hi: f64) -> (i32, i32) {
    let lo = if lo.is_finite() {
        lo.max(MIN_MS)
    } else {
        MIN_MS
    };
    let hi = if hi.is_finite() { hi.max(lo) } else { lo };
    // The epsilon keeps an exact decade (log10 off by an ulp) from widening the range.
    let lo_dec = (lo.log10() + 1e-9).floor() as i32;
    let hi_dec = ((hi.log10() - 1e-9).ceil() as i32).max(lo_dec + 1);
    (lo_dec, hi_dec)
}

/// A round axis maximum at or above `max` and a 1-2-5 tick step giving four to eight ticks.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    ((max / step).ceil() * step, step)
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        num_fixed(v, 0)
    } else {
        num_fixed(v, (-step.log10()).ceil() as usize)
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        num_fixed(ms, 0)
    } else if ms >= 1.0 {
        num_fixed(ms, 1)
    } else {
        num_fixed(ms, 3)
    }
}

fn panel_title(s: &mut String, f: &Frame, title: &str) {
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"##,
        num(f.x0),
        num(f.y0 - 14.0),
        xml_escape(title)
    );
}

/// A horizontal grid line at pixel `y` with its label left of the y axis.
fn grid_line_y(s: &mut String, f: &Frame, y: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#e5e5e5"/>"##,
        num(f.x0),
        num(f.right()),
        y = num(y)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end">{}</text>"##,
        num(f.x0 - 6.0),
        num(y + 4.0),
        xml_escape(label)
    );
}

/// A tick mark at pixel `x` on the x axis with its label below.
fn tick_x(s: &mut String, f: &Frame, x: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#333"/>"##,
        num(f.bottom()),
        num(f.bottom() + 5.0),
        x = num(x)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        num(x),
        num(f.bottom() + 18.0),
        xml_escape(label)
    );
}

fn axes(s: &mut String, f: &Frame, x_title: &str, y_title: &str) {
    let _ = writeln!(
        s,
        r##"<path d="M{x0},{y0} V{b} H{r}" fill="none" stroke="#333"/>"##,
        x0 = num(f.x0),
        y0 = num(f.y0),
        b = num(f.bottom()),
        r = num(f.right())
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        num(f.x0 + f.w / 2.0),
        num(f.bottom() + 38.0),
        xml_escape(x_title)
    );
    let (x, y) = (num(f.x0 - 60.0), num(f.y0 + f.h / 2.0));
    let _ = writeln!(
        s,
        r##"<text x="{x}" y="{y}" text-anchor="middle" transform="rotate(-90 {x} {y})">{}</text>"##,
        xml_escape(y_title)
    );
}

fn no_data(s: &mut String, f: &Frame, text: &str) {
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#888">{}</text>"##,
        num(f.x0 + f.w / 2.0),
        num(f.y0 + f.h / 2.0),
        xml_escape(text)
    );
}

fn polyline(s: &mut String, pts: &[(f64, f64)], color: &str, extra_attrs: &str) {
    let mut points = String::new();
    for (i, &(x, y)) in pts.iter().enumerate() {
        if i > 0 {
            points.push(' ');
        }
        let _ = write!(points, "{},{}", num(x), num(y));
    }
    let _ = writeln!(
        s,
        r##"<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.8" stroke-linejoin="round"{extra_attrs}/>"##
    );
}

/// A pixel coordinate with one decimal; a non-finite value becomes 0 so the SVG stays valid.
fn num(v: f64) -> String {
    num_fixed(v, 1)
}

fn num_fixed(v: f64, decimals: usize) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let s = format!("{v:.decimals$}");
    // "-0.0" reads oddly in a label and means nothing as a coordinate.
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(svg: &str) {
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let lower = svg.to_lowercase();
        assert!(!lower.contains("nan"), "NaN in SVG");
        assert!(!lower.contains("inf"), "inf in SVG");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn run_with_data_renders_one_line_per_nonempty_type() {
        let mut stats = Stats::default();
        for i in 1..=5000u64 {
            stats.txns[TxnKind::NewOrder.index()]
                .hist
                .record(200 + i * 37 % 90_000)
                .unwrap();
            stats.txns[TxnKind::Payment.index()]
                .hist
                .record(100 + i * 13 % 20_000)
                .unwrap();
            stats.txns[TxnKind::StockLevel.index()]
                .hist
                .record(1_000 + i * 997 % 2_000_000)
                .unwrap();
        }
        stats.txns[TxnKind::Delivery.index()]
            .hist
            .record(42_000)
            .unwrap();
        let timeline: Vec<f64> = (0..120).map(|i| 1000.0 + (i % 7) as f64 * 50.0).collect();
        let svg = render_svg(&PlotInput {
            title: "2 warehouses, 1 node, embedded",
            timeline: &timeline,
            stats: &stats,
        });
        assert_clean(&svg);
        // One throughput line and four CDFs (order_status has no samples).
        assert_eq!(svg.matches("<polyline").count(), 5);
        for name in ["new_order", "payment", "delivery", "stock_level"] {
            assert!(svg.contains(&format!(r##"data-txn="{name}""##)), "{name}");
            assert!(svg.contains(&format!(">{name} (n=")), "legend {name}");
        }
        assert!(!svg.contains("order_status"));
        assert!(svg.contains("2 warehouses, 1 node, embedded"));
        assert!(svg.contains("stroke-dasharray"));
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let points = line.split('"').nth(1).unwrap();
            assert!(points.split(' ').count() <= MAX_CDF_POINTS.max(timeline.len()));
        }
    }

    #[test]
    fn empty_inputs_render() {
        let stats = Stats::default();
        let svg = render_svg(&PlotInput {
            title: "",
            timeline: &[],
            stats: &stats,
        });
        assert_clean(&svg);
        assert_eq!(svg.matches("<polyline").count(), 0);
        assert!(svg.contains("no throughput samples"));
        assert!(svg.contains("no transactions recorded"));
    }

    #[test]
    fn degenerate_timeline_renders() {
        let stats = Stats::default();
        for timeline in [
            vec![0.0],
            vec![0.0, 0.0, 0.0],
            vec![f64::NAN, f64::INFINITY, 5.0],
        ] {
            let svg = render_svg(&PlotInput {
                title: "x",
                timeline: &timeline,
                stats: &stats,
            });
            assert_clean(&svg);
            assert_eq!(svg.matches("<polyline").count(), 1);
        }
    }

    #[test]
    fn single_sample_cdf_renders() {
        let mut stats = Stats::default();
        stats.txns[TxnKind::OrderStatus.index()]
            .hist
            .record(1)
            .unwrap();
        let svg = render_svg(&PlotInput {
            title: "x",
            timeline: &[],
            stats: &stats,
        });
        assert_clean(&svg);
        assert!(svg.contains(r##"data-txn="order_status""##));
    }

    #[test]
    fn text_is_xml_escaped() {
        assert_eq!(
            xml_escape(r##"a<b>&"c"'d'"##),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        let stats = Stats::default();
        let svg = render_svg(&PlotInput {
            title: "<script>&</script>",
            timeline: &[1.0],
            stats: &stats,
        });
        assert!(svg.contains("&lt;script&gt;&amp;&lt;/script&gt;"));
        assert!(!svg.contains("<script>"));
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(f64::NAN), (1.0, 0.2));
        assert_eq!(nice_axis(120.0), (120.0, 20.0));
        assert_eq!(decade_range(0.25, 40.0), (-1, 2));
        assert_eq!(decade_range(1.0, 1.0), (0, 1));
        assert_eq!(decade_range(0.0, f64::INFINITY), (-3, -2));
        assert_eq!(num(f64::NAN), "0.0");
        assert_eq!(num_fixed(-0.01, 1), "0.0");
        let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64 * 0.1, 0.0)).collect();
        let d = downsample(&pts, 5.0, 200);
        assert!(d.len() <= 200);
        assert_eq!(d.first(), pts.first());
        assert_eq!(d.last(), pts.last());
    }
}
