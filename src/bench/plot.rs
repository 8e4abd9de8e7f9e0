//! Hand-written SVG charts for the benchmark report: line charts (linear or log–log axes,
//! several series, legend, optional diagonal), horizontal bar charts, heatmaps with cell labels
//! and strip/box plots.
//!
//! Why by hand: a plotting crate needs embedded fonts and a long build; an SVG's text is laid
//! out by the viewer, so writing the markup ourselves needs no font at generation time. Every
//! chart is a plain struct whose `svg()` returns the whole document:
//!
//! * a `viewBox` and a fixed pixel size (the report's CSS scales it down on narrow screens);
//! * text escaped ([`escape`]); numbers printed with fixed precision (one decimal for pixel
//!   coordinates, [`fmt_tick`] for labels), never `NaN` or `inf`: non-finite data points are
//!   dropped and a line is broken where they were;
//! * the same chart always gives the same bytes (no ids, no randomness; the strip plot's
//!   jitter is a hash of the point's index).
//!
//! Colours are the Okabe–Ito palette ([`PALETTE`]), readable by colour-blind hunters.

use std::fmt::Write;

/// Okabe–Ito colours (blue, orange, green, pink, sky, vermillion), then grey and black.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#666666", "#000000",
];

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif";
/// Approximate width of one character of 12 px text, for layout.
const CHAR_W: f64 = 7.0;

/// Escapes text for SVG/HTML content and attribute values.
///
/// ```
/// use threatrank::bench::plot::escape;
/// assert_eq!(escape(r#"a<b & "c"'"#), "a&lt;b &amp; &quot;c&quot;&#39;");
/// ```
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A pixel coordinate with one decimal (`-0.0` printed as `0.0`; non-finite as `0.0`, which
/// callers never pass).
fn px(v: f64) -> String {
    if !v.is_finite() {
        return "0.0".into();
    }
    let s = format!("{v:.1}");
    if s == "-0.0" {
        "0.0".into()
    } else {
        s
    }
}

/// A tick label: `decimals` fixed decimals, `-0` printed as `0`.
///
/// ```
/// use threatrank::bench::plot::fmt_tick;
/// assert_eq!(fmt_tick(0.25, 2), "0.25");
/// assert_eq!(fmt_tick(-0.0, 1), "0.0");
/// ```
pub fn fmt_tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A power of ten in short form: `1`, `10`, `100`, `1k` … `1G`; `0.1`, `0.01` … below one.
///
/// ```
/// use threatrank::bench::plot::fmt_power_of_ten;
/// assert_eq!(fmt_power_of_ten(3), "1k");
/// assert_eq!(fmt_power_of_ten(-2), "0.01");
/// assert_eq!(fmt_power_of_ten(13), "1e13");
/// ```
pub fn fmt_power_of_ten(e: i32) -> String {
    match e {
        0..=2 => format!("{}", 10u64.pow(e as u32)),
        3..=5 => format!("{}k", 10u64.pow(e as u32 - 3)),
        6..=8 => format!("{}M", 10u64.pow(e as u32 - 6)),
        9..=11 => format!("{}G", 10u64.pow(e as u32 - 9)),
        -6..=-1 => format!("{:.*}", (-e) as usize, 10f64.powi(e)),
        _ => format!("1e{e}"),
    }
}

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// equal steps
    Linear,
    /// equal ratios (base 10); values `<= 0` are not drawn
    Log,
}

/// One axis: title, scale and an optional fixed range (default: the data's, widened to ticks).
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// title under (x) or beside (y) the axis
    pub title: String,
    /// linear or log
    pub scale: Scale,
    /// fixed range `(lo, hi)`; data outside is clamped to it
    pub range: Option<(f64, f64)>,
}

impl Axis {
    /// A linear axis fitted to the data.
    pub fn linear(title: &str) -> Axis {
        Axis {
            title: title.to_string(),
            scale: Scale::Linear,
            range: None,
        }
    }

    /// A base-10 log axis fitted to the data (widened to whole powers of ten).
    pub fn log(title: &str) -> Axis {
        Axis {
            title: title.to_string(),
            scale: Scale::Log,
            range: None,
        }
    }

    /// Fixes the range.
    pub fn range(mut self, lo: f64, hi: f64) -> Axis {
        self.range = Some((lo, hi));
        self
    }

    /// The drawn domain and its ticks `(value, label)` for data values `data` (finite ones;
    /// for a log axis positive ones).
    pub fn ticks(&self, data: impl IntoIterator<Item = f64>) -> (f64, f64, Vec<(f64, String)>) {
        let usable = |v: &f64| v.is_finite() && (self.scale == Scale::Linear || *v > 0.0);
        let (mut lo, mut hi) = match self.range {
            Some((lo, hi)) if usable(&lo) && usable(&hi) && hi > lo => (lo, hi),
            _ => {
                let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                for v in data.into_iter().filter(usable) {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                if lo > hi {
                    match self.scale {
                        Scale::Linear => (0.0, 1.0),
                        Scale::Log => (1.0, 10.0),
                    }
                } else {
                    (lo, hi)
                }
            }
        };
        match self.scale {
            Scale::Linear => {
                if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
                    let pad = (lo.abs() * 0.1).max(1.0);
                    lo -= pad;
                    hi += pad;
                }
                let step = nice_step((hi - lo) / 5.0);
                if self.range.is_none() {
                    lo = (lo / step).floor() * step;
                    hi = (hi / step).ceil() * step;
                }
                let decimals = (-step.log10().floor()).max(0.0) as usize;
                let first = (lo / step - 1e-9).ceil() as i64;
                let last = (hi / step + 1e-9).floor() as i64;
                let ticks = (first..=last)
                    .map(|k| {
                        let v = k as f64 * step;
                        (v, fmt_tick(v, decimals))
                    })
                    .collect();
                (lo, hi, ticks)
            }
            Scale::Log => {
                let mut e_lo = lo.log10().floor() as i32;
                let mut e_hi = hi.log10().ceil() as i32;
                if e_hi <= e_lo {
                    e_hi = e_lo + 1;
                }
                if self.range.is_some() {
                    e_lo = lo.log10().ceil() as i32;
                    e_hi = hi.log10().floor() as i32;
                } else {
                    lo = 10f64.powi(e_lo);
                    hi = 10f64.powi(e_hi);
                }
                let ticks = (e_lo..=e_hi)
                    .map(|e| (10f64.powi(e), fmt_power_of_ten(e)))
                    .collect();
                (lo, hi, ticks)
            }
        }
    }
}

/// The step among 1, 2, 5 × 10^k closest above `raw` (`raw > 0`).
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let m = 10f64.powf(raw.log10().floor());
    let f = raw / m;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * m
}

/// Maps a data value to a pixel along one axis.
#[derive(Debug, Clone, Copy)]
struct Map {
    lo: f64,
    hi: f64,
    p0: f64,
    p1: f64,
    log: bool,
}

impl Map {
    fn new(axis: &Axis, lo: f64, hi: f64, p0: f64, p1: f64) -> Map {
        Map {
            lo,
            hi,
            p0,
            p1,
            log: axis.scale == Scale::Log,
        }
    }

    /// Pixel of `v` clamped to the domain; `None` when `v` cannot be drawn.
    fn at(&self, v: f64) -> Option<f64> {
        if !v.is_finite() || (self.log && v <= 0.0) {
            return None;
        }
        let v = v.clamp(self.lo, self.hi);
        let t = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        let p = self.p0 + t * (self.p1 - self.p0);
        p.is_finite().then_some(p)
    }
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// legend label
    pub name: String,
    /// stroke colour (`#rrggbb`)
    pub color: String,
    /// dashed stroke (references, baselines, peers)
    pub dashed: bool,
    /// a dot on every point
    pub markers: bool,
    /// `(x, y)` points, drawn in order
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A solid line without markers.
    pub fn new(name: &str, color: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            color: color.to_string(),
            dashed: false,
            markers: false,
            points,
        }
    }

    /// Sets [`Series::dashed`].
    pub fn dashed(mut self, on: bool) -> Series {
        self.dashed = on;
        self
    }

    /// Sets [`Series::markers`].
    pub fn markers(mut self, on: bool) -> Series {
        self.markers = on;
        self
    }
}

/// Width that fits `title` (bold 14 px, about 8.2 px a character) with margins.
fn title_width(title: &str) -> f64 {
    title.chars().count() as f64 * 8.2 + 40.0
}

/// Document open tag, title and background.
fn open(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-label=\"{t}\" font-family=\"{FONT}\" font-size=\"12\">\n<title>{t}</title>\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n\
         <text x=\"{x}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{t}</text>\n",
        w = px(w),
        h = px(h),
        x = px(w / 2.0),
        t = escape(title)
    );
    s
}

fn text(s: &mut String, x: f64, y: f64, anchor: &str, extra: &str, t: &str) {
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\"{extra}>{}</text>",
        px(x),
        px(y),
        escape(t)
    );
}

/// The horizontal value axis of bar and strip charts: vertical grid lines at the ticks, their
/// labels under the plot area, and the axis title below them.
fn value_axis(s: &mut String, ticks: &[(f64, String)], mx: &Map, a: &Area, title: &str) {
    let grid = "stroke=\"#e3e3e3\" stroke-width=\"1\"";
    for (v, label) in ticks {
        if let Some(p) = mx.at(*v) {
            line(s, p, a.top, p, a.bottom, grid);
            text(s, p, a.bottom + 16.0, "middle", "", label);
        }
    }
    text(
        s,
        (a.left + a.right) / 2.0,
        a.bottom + 36.0,
        "middle",
        "",
        title,
    );
}

fn line(s: &mut String, x1: f64, y1: f64, x2: f64, y2: f64, style: &str) {
    let _ = writeln!(
        s,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {style}/>",
        px(x1),
        px(y1),
        px(x2),
        px(y2)
    );
}

/// Plot-area rectangle in pixels.
#[derive(Debug, Clone, Copy)]
struct Area {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

/// Gridlines, ticks, labels and titles of both axes.
fn axes(
    s: &mut String,
    a: Area,
    x: (&Axis, &[(f64, String)], Map),
    y: (&Axis, &[(f64, String)], Map),
) {
    let grid = "stroke=\"#e3e3e3\" stroke-width=\"1\"";
    for (v, label) in x.1 {
        if let Some(p) = x.2.at(*v) {
            line(s, p, a.top, p, a.bottom, grid);
            text(s, p, a.bottom + 16.0, "middle", "", label);
        }
    }
    for (v, label) in y.1 {
        if let Some(p) = y.2.at(*v) {
            line(s, a.left, p, a.right, p, grid);
            text(s, a.left - 6.0, p + 4.0, "end", "", label);
        }
    }
    // minor gridlines of log axes: 2..9 × 10^k
    for (axis, ticks, map, vertical) in [(x.0, x.1, x.2, true), (y.0, y.1, y.2, false)] {
        if axis.scale != Scale::Log {
            continue;
        }
        for (v, _) in ticks {
            for m in 2..10 {
                let w = v * f64::from(m);
                if w > map.hi {
                    break;
                }
                if let Some(p) = map.at(w) {
                    let minor = "stroke=\"#f2f2f2\" stroke-width=\"1\"";
                    if vertical {
                        line(s, p, a.top, p, a.bottom, minor);
                    } else {
                        line(s, a.left, p, a.right, p, minor);
                    }
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888888\"/>",
        px(a.left),
        px(a.top),
        px(a.right - a.left),
        px(a.bottom - a.top)
    );
    text(
        s,
        (a.left + a.right) / 2.0,
        a.bottom + 36.0,
        "middle",
        "",
        &x.0.title,
    );
    let (yx, yy) = (a.left - 46.0, (a.top + a.bottom) / 2.0);
    let rot = format!(" transform=\"rotate(-90 {} {})\"", px(yx), px(yy));
    text(s, yx, yy, "middle", &rot, &y.0.title);
}

/// Polyline pieces of a series (split where a point cannot be drawn).
fn polylines(points: &[(f64, f64)], mx: Map, my: Map) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        match (mx.at(x), my.at(y)) {
            (Some(px_), Some(py_)) => {
                if let Some(last) = out.last_mut() {
                    last.push((px_, py_));
                }
            }
            _ => {
                if out.last().is_some_and(|l| !l.is_empty()) {
                    out.push(Vec::new());
                }
            }
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// A line chart: several series over shared axes, a legend on the right, an optional `y = x`
/// diagonal.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// title on top
    pub title: String,
    /// horizontal axis
    pub x: Axis,
    /// vertical axis
    pub y: Axis,
    /// the lines, drawn in order (later on top)
    pub series: Vec<Series>,
    /// draw the `y = x` diagonal (reliability curves)
    pub diagonal: bool,
}

impl LineChart {
    /// The SVG document.
    pub fn svg(&self) -> String {
        let legend_w = self
            .series
            .iter()
            .map(|s| s.name.chars().count() as f64 * CHAR_W + 40.0)
            .fold(120.0, f64::max)
            .min(260.0);
        let w = (560.0 + legend_w).max(title_width(&self.title));
        let legend_h = 30.0 + 20.0 * self.series.len() as f64;
        let h = 420f64.max(legend_h + 60.0);
        let a = Area {
            left: 70.0,
            top: 36.0,
            right: 540.0,
            bottom: h - 56.0,
        };
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (xlo, xhi, xt) = self.x.ticks(all().map(|p| p.0));
        let (ylo, yhi, yt) = self.y.ticks(all().map(|p| p.1));
        let mx = Map::new(&self.x, xlo, xhi, a.left, a.right);
        let my = Map::new(&self.y, ylo, yhi, a.bottom, a.top);
        let mut s = open(w, h, &self.title);
        axes(&mut s, a, (&self.x, &xt, mx), (&self.y, &yt, my));
        if self.diagonal {
            let (lo, hi) = (xlo.max(ylo), xhi.min(yhi));
            if let (Some(x1), Some(y1), Some(x2), Some(y2)) =
                (mx.at(lo), my.at(lo), mx.at(hi), my.at(hi))
            {
                line(
                    &mut s,
                    x1,
                    y1,
                    x2,
                    y2,
                    "stroke=\"#999999\" stroke-width=\"1\" stroke-dasharray=\"3 3\"",
                );
            }
        }
        for se in &self.series {
            let dash = if se.dashed {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            for piece in polylines(&se.points, mx, my) {
                let pts: Vec<String> = piece
                    .iter()
                    .map(|&(x, y)| format!("{},{}", px(x), px(y)))
                    .collect();
                let _ = writeln!(
                    s,
                    "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                    escape(&se.color),
                    pts.join(" ")
                );
                if se.markers {
                    for (x, y) in piece {
                        let _ = writeln!(
                            s,
                            "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>",
                            px(x),
                            px(y),
                            escape(&se.color)
                        );
                    }
                }
            }
        }
        legend(&mut s, a.right + 16.0, a.top + 4.0, &self.series);
        s.push_str("</svg>\n");
        s
    }
}

fn legend(s: &mut String, x: f64, y: f64, series: &[Series]) {
    for (i, se) in series.iter().enumerate() {
        let yy = y + 10.0 + 20.0 * i as f64;
        let dash = if se.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        line(
            s,
            x,
            yy - 4.0,
            x + 26.0,
            yy - 4.0,
            &format!("stroke=\"{}\" stroke-width=\"2\"{dash}", escape(&se.color)),
        );
        text(s, x + 32.0, yy, "start", "", &se.name);
    }
}

/// A horizontal bar chart: one bar per label, lengths proportional to the values, axis from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// title on top
    pub title: String,
    /// title of the value axis
    pub axis_title: String,
    /// `(label, value)`, top to bottom
    pub bars: Vec<(String, f64)>,
    /// bar colour
    pub color: String,
}

impl BarChart {
    /// The SVG document.
    pub fn svg(&self) -> String {
        let label_w = self
            .bars
            .iter()
            .map(|(l, _)| l.chars().count() as f64 * CHAR_W)
            .fold(40.0, f64::max)
            .min(220.0);
        let bar_h = 22.0;
        let h = 100.0 + bar_h * self.bars.len().max(1) as f64;
        let w = (label_w + 520.0).max(title_width(&self.title));
        let a = Area {
            left: label_w + 20.0,
            top: 36.0,
            right: w - 70.0,
            bottom: h - 56.0,
        };
        let axis = Axis::linear(&self.axis_title);
        let values = self.bars.iter().map(|b| b.1).chain([0.0]);
        let (lo, hi, ticks) = axis.ticks(values);
        let mx = Map::new(&axis, lo, hi, a.left, a.right);
        let mut s = open(w, h, &self.title);
        value_axis(&mut s, &ticks, &mx, &a, &self.axis_title);
        let zero = mx.at(0.0).unwrap_or(a.left);
        for (i, (label, v)) in self.bars.iter().enumerate() {
            let y = a.top + 4.0 + bar_h * i as f64;
            text(
                &mut s,
                a.left - 8.0,
                y + bar_h / 2.0 + 1.0,
                "end",
                "",
                label,
            );
            let Some(end) = mx.at(*v) else { continue };
            let (x0, x1) = if end >= zero {
                (zero, end)
            } else {
                (end, zero)
            };
            let _ = writeln!(
                s,
                "<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>",
                px(x0),
                px(y + 3.0),
                px(x1 - x0),
                px(bar_h - 6.0),
                escape(&self.color)
            );
            text(
                &mut s,
                x1 + 4.0,
                y + bar_h / 2.0 + 1.0,
                "start",
                " fill=\"#333333\"",
                &fmt_sig(*v),
            );
        }
        line(&mut s, zero, a.top, zero, a.bottom, "stroke=\"#888888\"");
        s.push_str("</svg>\n");
        s
    }
}

/// Three significant digits (fixed decimals), for value labels.
///
/// ```
/// use threatrank::bench::plot::fmt_sig;
/// assert_eq!(fmt_sig(0.012345), "0.0123");
/// assert_eq!(fmt_sig(12.345), "12.3");
/// assert_eq!(fmt_sig(f64::NAN), "-");
/// ```
pub fn fmt_sig(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (2 - mag).max(0) as usize;
    fmt_tick(v, decimals)
}

/// A heatmap: one cell per (row, column), shaded by a value in `[0, 1]`, with a text label.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// title on top
    pub title: String,
    /// title over the columns
    pub col_title: String,
    /// title beside the rows
    pub row_title: String,
    /// row labels, top to bottom
    pub rows: Vec<String>,
    /// column labels, left to right
    pub cols: Vec<String>,
    /// shade per cell in `[0, 1]` (clamped; non-finite as 0), `rows × cols`
    pub shade: Vec<Vec<f64>>,
    /// label per cell, `rows × cols`
    pub labels: Vec<Vec<String>>,
}

/// White → dark blue for `t` in `[0, 1]`.
fn blue(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b) = ((247.0, 251.0, 255.0), (8.0, 48.0, 107.0));
    let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

impl Heatmap {
    /// The SVG document.
    pub fn svg(&self) -> String {
        let (cw, ch) = (130.0, 56.0);
        let label_w = self
            .rows
            .iter()
            .map(|l| l.chars().count() as f64 * CHAR_W)
            .fold(40.0, f64::max);
        let left = label_w + 60.0;
        let top = 78.0;
        let w = left + cw * self.cols.len() as f64 + 30.0;
        let h = top + ch * self.rows.len() as f64 + 30.0;
        let mut s = open(w.max(360.0).max(title_width(&self.title)), h, &self.title);
        text(
            &mut s,
            left + cw * self.cols.len() as f64 / 2.0,
            44.0,
            "middle",
            " font-weight=\"bold\"",
            &self.col_title,
        );
        for (c, label) in self.cols.iter().enumerate() {
            text(
                &mut s,
                left + cw * (c as f64 + 0.5),
                top - 10.0,
                "middle",
                "",
                label,
            );
        }
        let (yx, yy) = (20.0, top + ch * self.rows.len() as f64 / 2.0);
        let rot = format!(
            " font-weight=\"bold\" transform=\"rotate(-90 {} {})\"",
            px(yx),
            px(yy)
        );
        text(&mut s, yx, yy, "middle", &rot, &self.row_title);
        for (r, label) in self.rows.iter().enumerate() {
            let y = top + ch * r as f64;
            text(&mut s, left - 8.0, y + ch / 2.0 + 4.0, "end", "", label);
            for c in 0..self.cols.len() {
                let t = self
                    .shade
                    .get(r)
                    .and_then(|row| row.get(c))
                    .copied()
                    .unwrap_or(0.0);
                let t = if t.is_finite() {
                    t.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let x = left + cw * c as f64;
                let _ = writeln!(
                    s,
                    "<rect class=\"cell\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#ffffff\"/>",
                    px(x),
                    px(y),
                    px(cw),
                    px(ch),
                    blue(t)
                );
                let fill = if t > 0.55 { "#ffffff" } else { "#000000" };
                let label = self
                    .labels
                    .get(r)
                    .and_then(|row| row.get(c))
                    .map_or("", |l| l.as_str());
                text(
                    &mut s,
                    x + cw / 2.0,
                    y + ch / 2.0 + 4.0,
                    "middle",
                    &format!(" fill=\"{fill}\""),
                    label,
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// One row of a [`StripPlot`].
#[derive(Debug, Clone, PartialEq)]
pub struct StripGroup {
    /// row label
    pub name: String,
    /// colour of points and box
    pub color: String,
    /// the values (non-finite ones are dropped)
    pub values: Vec<f64>,
}

/// A strip plot with boxes: per group a row of jittered points over a box (quartiles, median)
/// and whiskers (min to max), on a shared horizontal value axis.
#[derive(Debug, Clone, PartialEq)]
pub struct StripPlot {
    /// title on top
    pub title: String,
    /// the value axis (horizontal)
    pub axis: Axis,
    /// rows, top to bottom
    pub groups: Vec<StripGroup>,
}

/// Quantile `q` of sorted finite values, linear interpolation between order statistics
/// (Hyndman & Fan type 7, numpy's default). `None` when empty.
///
/// ```
/// use threatrank::bench::plot::quantile;
/// assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
/// assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.25), Some(1.75));
/// assert_eq!(quantile(&[], 0.5), None);
/// ```
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (i, frac) = (h.floor() as usize, h - h.floor());
    let a = sorted[i];
    let b = sorted[(i + 1).min(sorted.len() - 1)];
    Some(a + (b - a) * frac)
}

/// Deterministic jitter in `[-1, 1]` for point `i` of group `g` (splitmix64 of the pair).
fn jitter(g: usize, i: usize) -> f64 {
    let z = crate::rng::mix64(((g as u64) << 32) ^ i as u64);
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

impl StripPlot {
    /// The SVG document.
    pub fn svg(&self) -> String {
        let label_w = self
            .groups
            .iter()
            .map(|g| g.name.chars().count() as f64 * CHAR_W)
            .fold(60.0, f64::max)
            .min(220.0);
        let row_h = 56.0;
        let h = 100.0 + row_h * self.groups.len().max(1) as f64;
        let w = (label_w + 560.0).max(title_width(&self.title));
        let a = Area {
            left: label_w + 24.0,
            top: 36.0,
            right: w - 30.0,
            bottom: h - 56.0,
        };
        let all = self.groups.iter().flat_map(|g| g.values.iter().copied());
        let (lo, hi, ticks) = self.axis.ticks(all);
        let mx = Map::new(&self.axis, lo, hi, a.left, a.right);
        let mut s = open(w, h, &self.title);
        value_axis(&mut s, &ticks, &mx, &a, &self.axis.title);
        for (g, group) in self.groups.iter().enumerate() {
            let cy = a.top + row_h * (g as f64 + 0.5);
            let mut v: Vec<f64> = group
                .values
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect();
            v.sort_by(f64::total_cmp);
            text(&mut s, a.left - 8.0, cy - 2.0, "end", "", &group.name);
            let median = quantile(&v, 0.5);
            text(
                &mut s,
                a.left - 8.0,
                cy + 12.0,
                "end",
                " fill=\"#555555\" font-size=\"10\"",
                &format!(
                    "n={}, median {}",
                    v.len(),
                    median.map_or("-".into(), |m| fmt_tick(m, 3))
                ),
            );
            let color = escape(&group.color);
            if let (Some(q1), Some(q3), Some(med), Some(min), Some(max)) = (
                quantile(&v, 0.25).and_then(|q| mx.at(q)),
                quantile(&v, 0.75).and_then(|q| mx.at(q)),
                median.and_then(|q| mx.at(q)),
                v.first().and_then(|q| mx.at(*q)),
                v.last().and_then(|q| mx.at(*q)),
            ) {
                line(
                    &mut s,
                    min,
                    cy,
                    max,
                    cy,
                    &format!("stroke=\"{color}\" stroke-width=\"1\""),
                );
                let _ = writeln!(
                    s,
                    "<rect class=\"box\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"20\" fill=\"{color}\" fill-opacity=\"0.15\" stroke=\"{color}\"/>",
                    px(q1),
                    px(cy - 10.0),
                    px(q3 - q1)
                );
                line(
                    &mut s,
                    med,
                    cy - 12.0,
                    med,
                    cy + 12.0,
                    &format!("stroke=\"{color}\" stroke-width=\"3\""),
                );
            }
            for (i, x) in group.values.iter().enumerate() {
                let Some(p) = mx.at(*x) else { continue };
                let _ = writeln!(
                    s,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2\" fill=\"{color}\" fill-opacity=\"0.45\"/>",
                    px(p),
                    px(cy + 16.0 * jitter(g, i))
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The SVG without its `xmlns` attribute, for inlining in HTML5 (where the namespace is
/// implied): a self-contained page then holds no `http://` reference at all.
pub fn inline(svg: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that every tag is closed in order (a minimal XML well-formedness check: no
    /// comments, CDATA or processing instructions are emitted) and that attribute quotes are
    /// balanced. Returns the element names in document order.
    pub(crate) fn check_well_formed(doc: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            if text.contains('>') {
                return Err(format!("stray '>' in text {text:?}"));
            }
            check_entities(text)?;
            let end = rest[start..]
                .find('>')
                .ok_or_else(|| "unclosed tag".to_string())?
                + start;
            let tag = &rest[start + 1..end];
            if !tag.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> without open tag"))?;
                if open != name {
                    return Err(format!("</{name}> closes <{open}>"));
                }
            } else {
                let name: String = tag
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '/')
                    .collect();
                if name.is_empty() || tag.contains('<') {
                    return Err(format!("bad tag <{tag}>"));
                }
                names.push(name.clone());
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[end + 1..];
        }
        check_entities(rest)?;
        if rest.trim().is_empty() && stack.is_empty() {
            Ok(names)
        } else {
            Err(format!("unclosed elements {stack:?}"))
        }
    }

    fn check_entities(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let ent = &text[i..text[i..].find(';').map_or(text.len(), |j| i + j + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].contains(&ent) {
                return Err(format!("bad entity {ent:?}"));
            }
        }
        Ok(())
    }

    fn no_bad_numbers(svg: &str) {
        for bad in ["NaN", "inf", "e+", "-0.0\""] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
    }

    fn sample_chart() -> LineChart {
        LineChart {
            title: "PR <TP> & co".into(),
            x: Axis::linear("recall").range(0.0, 1.0),
            y: Axis::linear("precision").range(0.0, 1.0),
            series: vec![
                Series::new("gbdt", PALETTE[0], vec![(0.0, 1.0), (0.5, 0.8), (1.0, 0.3)]),
                Series::new(
                    "a \"peer\"",
                    PALETTE[5],
                    vec![
                        (0.0, 0.9),
                        (f64::NAN, 0.5),
                        (0.6, f64::INFINITY),
                        (1.0, 0.2),
                    ],
                )
                .dashed(true)
                .markers(true),
            ],
            diagonal: true,
        }
    }

    #[test]
    fn line_chart_is_well_formed_escaped_and_finite() {
        let svg = sample_chart().svg();
        let names = check_well_formed(&svg).unwrap();
        assert_eq!(names[0], "svg");
        assert!(svg.contains("viewBox=\"0 0 "));
        assert!(svg.contains("PR &lt;TP&gt; &amp; co"));
        assert!(svg.contains("a &quot;peer&quot;"));
        no_bad_numbers(&svg);
        // the NaN and inf points break the dashed line into two pieces
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(
            svg.matches("stroke-dasharray=\"3 3\"").count(),
            1,
            "diagonal"
        );
        assert_eq!(sample_chart().svg(), svg, "deterministic");
    }

    #[test]
    fn linear_ticks_are_nice() {
        let (lo, hi, t) = Axis::linear("x").range(0.0, 1.0).ticks([]);
        assert_eq!((lo, hi), (0.0, 1.0));
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (lo, hi, t) = Axis::linear("x").ticks([3.0, 47.0]);
        assert_eq!((lo, hi), (0.0, 50.0));
        assert_eq!(t.len(), 6);
        assert_eq!(t[1].1, "10");
        // a constant series still gets a range
        let (lo, hi, _) = Axis::linear("x").ticks([0.5, 0.5]);
        assert!(lo < 0.5 && hi > 0.5);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
    }

    #[test]
    fn log_axis_ticks_at_powers_of_ten() {
        let (lo, hi, t) = Axis::log("rows").ticks([3.0, 700.0, -1.0, 0.0, f64::NAN]);
        assert_eq!((lo, hi), (1.0, 1000.0));
        let values: Vec<f64> = t.iter().map(|(v, _)| *v).collect();
        assert_eq!(values, [1.0, 10.0, 100.0, 1000.0]);
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "10", "100", "1k"]);
        let (_, _, t) = Axis::log("s").ticks([0.02, 0.5]);
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.01", "0.1", "1"]);
        let chart = LineChart {
            title: "seconds".into(),
            x: Axis::log("rows"),
            y: Axis::log("seconds"),
            series: vec![Series::new(
                "threatrank",
                PALETTE[0],
                vec![(1e3, 0.5), (1e5, 20.0), (0.0, 1.0), (1e6, 300.0)],
            )
            .markers(true)],
            diagonal: false,
        };
        let svg = chart.svg();
        check_well_formed(&svg).unwrap();
        no_bad_numbers(&svg);
        for label in [">1k<", ">10k<", ">100k<", ">1M<", ">0.1<", ">1<", ">1k<"] {
            assert!(svg.contains(label), "{label}");
        }
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "the x = 0 point is not drawn"
        );
    }

    /// Widths of the `class="bar"` rects, in order.
    fn bar_widths(svg: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains("class=\"bar\""))
            .map(|l| {
                let w = l.split("width=\"").nth(1).unwrap();
                w[..w.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn bars_are_proportional() {
        let chart = BarChart {
            title: "families".into(),
            axis_title: "mean |contribution|".into(),
            bars: vec![
                ("tenant".into(), 4.0),
                ("size".into(), 2.0),
                ("time".into(), 1.0),
                ("none".into(), 0.0),
                ("bad".into(), f64::NAN),
            ],
            color: PALETTE[0].into(),
        };
        let svg = chart.svg();
        check_well_formed(&svg).unwrap();
        no_bad_numbers(&svg);
        let w = bar_widths(&svg);
        assert_eq!(w.len(), 4, "the NaN bar is not drawn");
        assert!((w[0] / w[1] - 2.0).abs() < 0.01 && (w[1] / w[2] - 2.0).abs() < 0.02);
        assert_eq!(w[3], 0.0);
    }

    #[test]
    fn heatmap_labels_every_cell() {
        let h = Heatmap {
            title: "confusion".into(),
            col_title: "predicted".into(),
            row_title: "true".into(),
            rows: vec!["TP".into(), "BP".into()],
            cols: vec!["TP".into(), "BP".into()],
            shade: vec![vec![1.0, 0.0], vec![f64::NAN, 0.5]],
            labels: vec![
                vec!["10".into(), "0".into()],
                vec!["3 <".into(), "5".into()],
            ],
        };
        let svg = h.svg();
        check_well_formed(&svg).unwrap();
        no_bad_numbers(&svg);
        assert_eq!(svg.matches("class=\"cell\"").count(), 4);
        assert!(svg.contains(">3 &lt;<"));
        assert!(svg.contains(&blue(1.0)) && blue(0.0) == "#f7fbff");
    }

    #[test]
    fn strip_plot_has_a_box_per_group_and_a_dot_per_value() {
        let p = StripPlot {
            title: "NDCG@10 per tenant".into(),
            axis: Axis::linear("NDCG@10").range(0.0, 1.0),
            groups: vec![
                StripGroup {
                    name: "gbdt".into(),
                    color: PALETTE[0].into(),
                    values: vec![0.1, 0.5, 0.9, 1.0, f64::NAN],
                },
                StripGroup {
                    name: "empty".into(),
                    color: PALETTE[1].into(),
                    values: vec![],
                },
            ],
        };
        let svg = p.svg();
        check_well_formed(&svg).unwrap();
        no_bad_numbers(&svg);
        assert_eq!(svg.matches("class=\"box\"").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("n=4, median 0.700"));
        assert_eq!(p.svg(), svg);
    }

    #[test]
    fn inline_drops_the_namespace_only() {
        let svg = sample_chart().svg();
        let i = inline(&svg);
        assert!(!i.contains("http://") && i.starts_with("<svg width="));
        assert_eq!(
            i.len() + " xmlns=\"http://www.w3.org/2000/svg\"".len(),
            svg.len()
        );
    }

    #[test]
    fn the_checker_rejects_broken_markup() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg>a & b</svg>").is_err());
        assert!(check_well_formed("<svg><text x=\"1>a</text></svg>").is_err());
        assert!(check_well_formed("<svg><g/></svg>").is_ok());
    }
}
