//! Charts drawn as vector graphics: headline cards, bars, lines, a heatmap,
//! a funnel and tables. Each draws itself in a box below the canvas cursor
//! and shows "no data" when its rows are empty or all zero.

use serde_json::{Map, Value};

use super::canvas::*;
use super::def::{Format, Kind, Lang, Section, fmt};

pub type Row = Map<String, Value>;

fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn no_data_label(lang: Lang) -> &'static str {
    match lang {
        Lang::Ko => "데이터 없음",
        Lang::En => "No data",
    }
}

fn no_data(c: &mut Canvas, y: f32, h: f32, lang: Lang) {
    c.rect(MARGIN, y, CONTENT_W, h, Some(PANEL), None);
    c.text(MARGIN + CONTENT_W / 2.0, y + h / 2.0 + 1.5, no_data_label(lang), 10.0, false, MUTED, Align::Center);
}

/// A "nice" axis maximum and step for values up to `max`.
pub fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// The default height of a section, in mm, title included.
pub fn height(s: &Section, rows: &[Row]) -> f32 {
    let chart = s.height.unwrap_or(match s.kind {
        Kind::Cards => 22.0 * s.metrics.len().div_ceil(4).max(1) as f32 + 2.0,
        Kind::Bars | Kind::Lines => 62.0,
        Kind::Hbars => 7.0 * rows.len().max(3) as f32 + 4.0,
        Kind::Heatmap => 58.0,
        Kind::Funnel => 12.0 * rows.len().max(3) as f32,
        Kind::Table => 6.0 * (rows.len().max(1) + 1) as f32 + 2.0,
    });
    let title = if s.title.is_some() { 7.0 } else { 0.0 } + if s.note.is_some() { 4.0 } else { 0.0 };
    title + chart + 6.0
}

/// Wraps `text` into lines of at most `max` mm.
fn wrap(c: &Canvas, text: &str, size: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let candidate = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
            if !line.is_empty() && c.width(&candidate, size, false) > max {
                lines.push(std::mem::replace(&mut line, word.to_string()));
            } else {
                line = candidate;
            }
        }
        lines.push(line);
    }
    lines
}

/// The height of a section's title and note.
pub fn head_height(c: &Canvas, s: &Section, lang: Lang) -> f32 {
    let title = if s.title.is_some() { 7.0 } else { 0.0 };
    let note = s.note.as_ref().map_or(0.0, |n| wrap(c, n.get(lang), 7.5, CONTENT_W).len() as f32 * 3.4 + 0.8);
    title + note
}

/// Draws the title and note at `y`; returns the y below them.
fn head(c: &mut Canvas, s: &Section, lang: Lang, mut y: f32) -> f32 {
    if let Some(t) = &s.title {
        c.text(MARGIN, y + 4.5, t.get(lang), 11.5, true, INK, Align::Left);
        y += 7.0;
    }
    if let Some(n) = &s.note {
        for l in wrap(c, n.get(lang), 7.5, CONTENT_W) {
            c.text(MARGIN, y + 2.4, &l, 7.5, false, MUTED, Align::Left);
            y += 3.4;
        }
        y += 0.8;
    }
    y
}

/// The height a chart section takes at its default size: its title and
/// note (wrapped as drawn), the chart, and the gap after it.
pub fn natural_height(c: &Canvas, s: &Section, rows: &[Row], lang: Lang) -> f32 {
    height(s, rows) - 7.0 * f32::from(u8::from(s.title.is_some())) - 4.0 * f32::from(u8::from(s.note.is_some())) + head_height(c, s, lang)
}

/// Draws a section below the cursor and moves the cursor past it, at the
/// height the page layout chose (see `layout`). Tables continue on the next
/// page, under their repeated header, rather than leave a page part blank.
pub fn draw(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, incomplete: bool, h: Option<f32>) {
    if s.new_page {
        c.new_page();
    }
    if s.kind == Kind::Table {
        return table(c, s, rows, lang);
    }
    let h = h.unwrap_or_else(|| natural_height(c, s, rows, lang));
    c.ensure(h);
    let y = head(c, s, lang, c.y);
    let body = c.y + h - 6.0 - y;
    match s.kind {
        Kind::Cards => cards(c, s, rows, lang, y, incomplete),
        Kind::Bars => bars(c, s, rows, lang, y, body),
        Kind::Lines => lines(c, s, rows, lang, y, body),
        Kind::Hbars => hbars(c, s, rows, lang, y, body),
        Kind::Heatmap => heatmap(c, s, rows, lang, y, body),
        Kind::Funnel => funnel(c, s, rows, lang, y, body),
        Kind::Table => {}
    }
    c.y += h;
}

fn cards(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, incomplete: bool) {
    let per_row = 4usize;
    let gap = 3.0;
    let w = (CONTENT_W - gap * (per_row as f32 - 1.0)) / per_row as f32;
    let ch = 20.0;
    let vs = match lang {
        Lang::Ko => "전주 대비",
        Lang::En => "vs last week",
    };
    for (i, m) in s.metrics.iter().enumerate() {
        let x = MARGIN + (i % per_row) as f32 * (w + gap);
        let top = y + (i / per_row) as f32 * (ch + 2.0);
        c.rect(x, top, w, ch, Some(PANEL), Some((RULE, 0.4)));
        c.text(x + 3.0, top + 5.0, m.label.get(lang), 7.5, false, MUTED, Align::Left);
        let row = rows.iter().find(|r| text(r.get("metric")) == m.key);
        let now = row.and_then(|r| num(r.get("value")));
        let prev = row.and_then(|r| num(r.get("previous")));
        let main = match (now, m.format) {
            (None, _) => no_data_label(lang).to_string(),
            (Some(v), Format::Won) => fmt::won_short(v, lang),
            (Some(v), f) => fmt::value(&Value::from(v), f, lang),
        };
        c.text(x + 3.0, top + 11.5, &main, 12.5, true, INK, Align::Left);
        if let (Some(v), Format::Won) = (now, m.format) {
            c.text(x + 3.0, top + 15.3, &fmt::won_exact(v, lang), 6.0, false, MUTED, Align::Left);
        }
        // An incomplete week is not compared: its missing days are not a fall.
        let (delta, dir) = if incomplete { ("–".to_string(), 0) } else { fmt::change(now, prev, m.format) };
        let good = if m.lower_is_better { -dir } else { dir };
        let color = match good {
            1 => GOOD,
            -1 => BAD,
            _ => MUTED,
        };
        c.text(x + w - 3.0, top + 18.3, &format!("{delta} {vs}"), 6.5, false, color, Align::Right);
    }
}

/// The plot area of a value chart and its value axis.
struct Plot {
    left: f32,
    top: f32,
    w: f32,
    h: f32,
    lo: f64,
    hi: f64,
}

impl Plot {
    /// The y of value `v`.
    fn y(&self, v: f64) -> f32 {
        self.top + self.h - ((v - self.lo) / (self.hi - self.lo)) as f32 * self.h
    }
}

/// A value axis for `min..=max`: from zero (bars must start there), or for
/// lines whose values stay far from zero, from a round value under the
/// lowest, so that a change between two lines can be seen. Returns (lo, hi, step).
fn value_axis(min: f64, max: f64, from_zero: bool) -> (f64, f64, f64) {
    if from_zero || min <= 0.0 || max <= 0.0 || (max - min) / max > 0.5 {
        let (hi, step) = nice_axis(max);
        return (0.0, hi, step);
    }
    let (_, step) = nice_axis(max - min);
    let lo = ((min / step).floor() - 1.0).max(0.0) * step;
    let hi = (max / step).ceil() * step + if (max / step).fract() == 0.0 { step } else { 0.0 };
    (lo, hi, step)
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    Box,
    Line,
    Dashed,
}

/// Axes and gridlines for a value chart.
fn frame(
    c: &mut Canvas,
    s: &Section,
    lang: Lang,
    y: f32,
    h: f32,
    range: (f64, f64),
    from_zero: bool,
    legend: &[(String, Rgb8, Swatch)],
) -> Plot {
    let (lo, hi, step) = value_axis(range.0, range.1, from_zero);
    let plot = Plot { left: MARGIN + 16.0, top: y + 6.0, w: CONTENT_W - 18.0, h: h - 14.0, lo, hi };
    let (left, top, w, ph) = (plot.left, plot.top, plot.w, plot.h);
    let mut v = lo;
    while v <= hi + step / 2.0 {
        let gy = plot.y(v);
        let base = v == lo;
        c.line(&[(left, gy), (left + w, gy)], if base { MUTED } else { RULE }, if base { 0.6 } else { 0.3 });
        c.text(left - 2.0, gy + 1.0, &fmt::axis(v, s.format, lang), 6.0, false, MUTED, Align::Right);
        v += step;
    }
    // The value axis's title, above its labels; the category axis's, under them.
    if let Some(t) = &s.y_title {
        c.text(MARGIN, y + 2.5, t.get(lang), 6.5, false, MUTED, Align::Left);
    }
    if let Some(t) = &s.x_title {
        c.text(left + w / 2.0, top + ph + 8.5, t.get(lang), 6.5, false, MUTED, Align::Center);
    }
    // Legend, top right.
    let mut lx = MARGIN + CONTENT_W;
    for (label, color, swatch) in legend.iter().rev() {
        let tw = c.width(label, 7.0, false);
        lx -= tw;
        c.text(lx, y + 2.5, label, 7.0, false, INK, Align::Left);
        match swatch {
            Swatch::Box => {
                lx -= 4.0;
                c.rect(lx, y, 3.0, 3.0, Some(*color), None);
            }
            Swatch::Line => {
                lx -= 7.0;
                c.line(&[(lx, y + 1.5), (lx + 6.0, y + 1.5)], *color, 1.6);
                c.rect(lx + 2.1, y + 0.6, 1.8, 1.8, Some(*color), None);
            }
            Swatch::Dashed => {
                lx -= 7.0;
                c.dashed_line(&[(lx, y + 1.5), (lx + 6.0, y + 1.5)], *color, 0.9);
            }
        }
        lx -= 4.0;
    }
    plot
}

fn series_data(s: &Section, rows: &[Row]) -> (Vec<String>, Vec<Vec<f64>>) {
    let x = s.x.as_deref().unwrap_or("x");
    let labels = rows.iter().map(|r| text(r.get(x))).collect();
    let values = s.series.iter().map(|se| rows.iter().map(|r| num(r.get(&se.column)).unwrap_or(0.0)).collect()).collect();
    (labels, values)
}

fn all_zero(values: &[Vec<f64>]) -> bool {
    values.iter().flatten().all(|v| *v == 0.0)
}

fn bars(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, h: f32) {
    let (labels, values) = series_data(s, rows);
    if rows.is_empty() || all_zero(&values) {
        return no_data(c, y, h, lang);
    }
    let color = |i: usize| if s.series[i].comparison { PALETTE[1] } else { PALETTE[i % PALETTE.len()] };
    let legend: Vec<_> = s.series.iter().enumerate().map(|(i, se)| (se.label.get(lang).to_string(), color(i), Swatch::Box)).collect();
    let max = values.iter().flatten().cloned().fold(0.0, f64::max);
    let p = frame(c, s, lang, y, h, (0.0, max), true, &legend);
    let (left, top, w, ph) = (p.left, p.top, p.w, p.h);
    let groups = labels.len() as f32;
    let gw = w / groups;
    let bw = (gw * 0.75) / values.len() as f32;
    for (gi, label) in labels.iter().enumerate() {
        let gx = left + gi as f32 * gw + gw * 0.125;
        for (si, vals) in values.iter().enumerate() {
            let bh = top + ph - p.y(vals[gi]);
            c.rect(gx + si as f32 * bw, top + ph - bh, bw * 0.92, bh, Some(color(si)), None);
        }
        let l = s.x_labels.get(label).map(|t| t.get(lang).to_string()).unwrap_or_else(|| label.clone());
        c.text(left + gi as f32 * gw + gw / 2.0, top + ph + 4.0, &l, 6.5, false, INK, Align::Center);
    }
}

fn lines(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, h: f32) {
    let (labels, values) = series_data(s, rows);
    if rows.is_empty() || all_zero(&values) {
        return no_data(c, y, h, lang);
    }
    let color = |i: usize| if s.series[i].comparison { COMPARISON } else { line_color(i) };
    let swatch = |i: usize| if s.series[i].comparison { Swatch::Dashed } else { Swatch::Line };
    let legend: Vec<_> = s.series.iter().enumerate().map(|(i, se)| (se.label.get(lang).to_string(), color(i), swatch(i))).collect();
    let max = values.iter().flatten().cloned().fold(0.0, f64::max);
    let min = values.iter().flatten().cloned().fold(f64::INFINITY, f64::min);
    let p = frame(c, s, lang, y, h, (min, max), false, &legend);
    let (left, top, w, ph) = (p.left, p.top, p.w, p.h);
    let n = labels.len().max(1) as f32;
    let px = |i: usize| left + (i as f32 + 0.5) * w / n;
    // Comparison series (last week) first, thin and dashed, so that the
    // period's own line is drawn over them and never hidden.
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by_key(|&i| !s.series[i].comparison);
    for si in order {
        let pts: Vec<(f32, f32)> = values[si].iter().enumerate().map(|(i, v)| (px(i), p.y(*v))).collect();
        if s.series[si].comparison {
            c.dashed_line(&pts, color(si), 0.9);
        } else {
            c.line(&pts, color(si), 1.6);
            for (x, yy) in &pts {
                c.rect(x - 0.9, yy - 0.9, 1.8, 1.8, Some(color(si)), None);
            }
        }
    }
    for (i, label) in labels.iter().enumerate() {
        c.text(px(i), top + ph + 4.0, label, 6.5, false, INK, Align::Center);
    }
}

/// Comparison series (last week): a light grey-blue.
const COMPARISON: Rgb8 = Rgb8(0x9A, 0xA6, 0xB8);

fn line_color(i: usize) -> Rgb8 {
    [PALETTE[0], Rgb8::hex(0x9A_A6_B8), PALETTE[2], PALETTE[3]][i % 4]
}

fn hbars(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, h: f32) {
    let (labels, values) = series_data(s, rows);
    if rows.is_empty() || values.is_empty() || all_zero(&values) {
        return no_data(c, y, h, lang);
    }
    let max = values[0].iter().cloned().fold(0.0, f64::max).max(1.0);
    let label_w = 32.0;
    let text_w = 42.0;
    let bar_w = CONTENT_W - label_w - text_w;
    let rh = (h - 2.0) / labels.len() as f32;
    for (i, label) in labels.iter().enumerate() {
        let ry = y + i as f32 * rh;
        let l = s.x_labels.get(label).map(|t| t.get(lang).to_string()).unwrap_or_else(|| label.clone());
        c.text(MARGIN + label_w - 2.0, ry + rh * 0.65, &c.fit(&l, 7.5, false, label_w - 3.0), 7.5, false, INK, Align::Right);
        let w = (values[0][i] / max) as f32 * bar_w;
        c.rect(MARGIN + label_w, ry + rh * 0.18, w, rh * 0.64, Some(PALETTE[0]), None);
        let mut t = match s.format {
            Format::Won => fmt::won_short(values[0][i], lang),
            f => fmt::value(&Value::from(values[0][i]), f, lang),
        };
        for col in &s.columns {
            t.push_str(&format!("  {}", fmt::value(rows[i].get(&col.column).unwrap_or(&Value::Null), col.format, lang)));
        }
        c.text(MARGIN + label_w + w + 2.0, ry + rh * 0.65, &t, 7.0, false, INK, Align::Left);
    }
}

fn heatmap(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, h: f32) {
    let (rk, ck, vk) = (s.rows.as_deref().unwrap_or("row"), s.cols.as_deref().unwrap_or("col"), s.value.as_deref().unwrap_or("value"));
    let nr = s.row_labels.len().max(1);
    let nc = s.col_labels.len().max(1);
    let mut grid = vec![vec![0.0f64; nc]; nr];
    for r in rows {
        let (Some(ri), Some(ci)) = (num(r.get(rk)), num(r.get(ck))) else { continue };
        // Row values start at 1 (ISO weekday), column values at 0 (hour).
        let (ri, ci) = (ri as usize, ci as usize);
        if ri >= 1 && ri <= nr && ci < nc {
            grid[ri - 1][ci] += num(r.get(vk)).unwrap_or(0.0);
        }
    }
    let max = grid.iter().flatten().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return no_data(c, y, h, lang);
    }
    let label_w = 10.0;
    let cw = (CONTENT_W - label_w) / nc as f32;
    let rh = (h - 10.0) / nr as f32;
    let lo = Rgb8::hex(0xF1F5FB);
    let hi = Rgb8::hex(0x1F4E99);
    for (ri, row) in grid.iter().enumerate() {
        let ry = y + ri as f32 * rh;
        c.text(MARGIN + label_w - 2.0, ry + rh * 0.65, s.row_labels[ri].get(lang), 7.0, false, INK, Align::Right);
        for (ci, v) in row.iter().enumerate() {
            let t = (*v / max) as f32;
            let color = lo.mix(hi, t);
            let x = MARGIN + label_w + ci as f32 * cw;
            c.rect(x, ry, cw - 0.3, rh - 0.3, Some(color), None);
            if *v > 0.0 {
                let ink = if t > 0.55 { Rgb8(255, 255, 255) } else { INK };
                c.text(x + cw / 2.0, ry + rh * 0.62, &fmt::thousands(*v as i128), 4.6, false, ink, Align::Center);
            }
        }
    }
    for (ci, l) in s.col_labels.iter().enumerate() {
        if ci % 2 == 0 {
            c.text(MARGIN + label_w + ci as f32 * cw + cw / 2.0, y + nr as f32 * rh + 3.5, l.get(lang), 6.0, false, MUTED, Align::Center);
        }
    }
    if let Some(t) = &s.x_title {
        c.text(MARGIN + label_w, y + nr as f32 * rh + 8.2, t.get(lang), 6.5, false, MUTED, Align::Left);
    }
    // Scale, with what it measures.
    let sy = y + nr as f32 * rh + 6.0;
    if let Some(t) = &s.value_title {
        c.text(MARGIN + CONTENT_W - 44.0, sy + 2.2, t.get(lang), 6.0, false, MUTED, Align::Right);
    }
    for i in 0..20 {
        c.rect(MARGIN + CONTENT_W - 40.0 + i as f32 * 1.5, sy, 1.5, 2.5, Some(lo.mix(hi, i as f32 / 19.0)), None);
    }
    c.text(MARGIN + CONTENT_W - 40.5, sy + 5.4, "0", 6.0, false, MUTED, Align::Center);
    c.text(MARGIN + CONTENT_W - 9.0, sy + 2.2, &fmt::thousands(max as i128), 6.0, false, MUTED, Align::Left);
}

fn funnel(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang, y: f32, h: f32) {
    let (labels, values) = series_data(s, rows);
    if rows.is_empty() || values.is_empty() || all_zero(&values) {
        return no_data(c, y, h, lang);
    }
    let vals = &values[0];
    let first = vals[0].max(1.0);
    let rh = h / labels.len() as f32;
    let bar_max = CONTENT_W * 0.62;
    let cx = MARGIN + 26.0 + bar_max / 2.0;
    for (i, label) in labels.iter().enumerate() {
        let ry = y + i as f32 * rh;
        let w = ((vals[i] / first) as f32 * bar_max).max(0.5);
        let color = PALETTE[0].mix(Rgb8::hex(0x8FB3EA), i as f32 / labels.len() as f32);
        c.rect(cx - w / 2.0, ry + 1.0, w, rh - 2.5, Some(color), None);
        let l = s.x_labels.get(label).map(|t| t.get(lang).to_string()).unwrap_or_else(|| label.clone());
        c.text(MARGIN + 24.0, ry + rh * 0.6, &l, 8.0, true, INK, Align::Right);
        c.text(cx, ry + rh * 0.6, &fmt::thousands(vals[i] as i128), 7.5, true, Rgb8(255, 255, 255), Align::Center);
        let of_first = vals[i] / first * 100.0;
        let step = if i == 0 {
            String::new()
        } else if vals[i - 1] > 0.0 {
            format!("{:.1}%", vals[i] / vals[i - 1] * 100.0)
        } else {
            "–".into()
        };
        let t = match lang {
            Lang::Ko => {
                if i == 0 {
                    "100%".to_string()
                } else {
                    format!("전 단계 대비 {step} · 전체 {of_first:.1}%")
                }
            }
            Lang::En => {
                if i == 0 {
                    "100%".to_string()
                } else {
                    format!("{step} of previous · {of_first:.1}% of all")
                }
            }
        };
        c.text(cx + bar_max / 2.0 + 4.0, ry + rh * 0.6, &t, 7.0, false, MUTED, Align::Left);
    }
}

fn is_numeric(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(_))) || v.and_then(|v| v.as_str()).is_some_and(|s| s.parse::<f64>().is_ok())
}

/// A table row's height, in mm.
pub const TABLE_ROW: f32 = 6.0;

/// The height a table's title, header and first rows (at most three, or the
/// "no data" box) need together: a table starts on a page only with them.
pub fn table_start(c: &Canvas, s: &Section, rows: &[Row], lang: Lang) -> (f32, f32) {
    let head_h = head_height(c, s, lang);
    (head_h, head_h + TABLE_ROW * (rows.len().min(3) + 1) as f32 + 2.0)
}

fn table(c: &mut Canvas, s: &Section, rows: &[Row], lang: Lang) {
    let rh = TABLE_ROW;
    c.ensure(table_start(c, s, rows, lang).1);
    let y = head(c, s, lang, c.y);
    if rows.is_empty() {
        no_data(c, y, rh * 2.0, lang);
        c.y = y + rh * 2.0 + 6.0;
        return;
    }
    let total: f32 = s.columns.iter().map(|col| col.width.unwrap_or(1.0)).sum();
    let widths: Vec<f32> = s.columns.iter().map(|col| col.width.unwrap_or(1.0) / total * CONTENT_W).collect();
    let numeric: Vec<bool> =
        s.columns.iter().map(|col| rows.iter().any(|r| is_numeric(r.get(&col.column))) && col.format != Format::Text).collect();
    let header = |c: &mut Canvas, y: f32| {
        c.rect(MARGIN, y, CONTENT_W, rh, Some(Rgb8::hex(0x2F3B4C)), None);
        let mut x = MARGIN;
        for (i, col) in s.columns.iter().enumerate() {
            let (tx, align) = if numeric[i] { (x + widths[i] - 2.0, Align::Right) } else { (x + 2.0, Align::Left) };
            c.text(tx, y + 4.1, &c.fit(col.label.get(lang), 7.0, true, widths[i] - 3.0), 7.0, true, Rgb8(255, 255, 255), align);
            x += widths[i];
        }
    };
    header(c, y);
    // Shaded columns are coloured by value relative to their own maximum.
    let shade_max: Vec<f64> = s
        .columns
        .iter()
        .map(|col| if col.shade { rows.iter().filter_map(|r| num(r.get(&col.column))).fold(0.0, f64::max) } else { 0.0 })
        .collect();
    let mut ry = y + rh;
    for (ri, r) in rows.iter().enumerate() {
        if ry + rh > BOTTOM {
            c.line(&[(MARGIN, ry), (MARGIN + CONTENT_W, ry)], RULE, 0.5);
            c.new_page();
            header(c, c.y);
            ry = c.y + rh;
        }
        if ri % 2 == 1 {
            c.rect(MARGIN, ry, CONTENT_W, rh, Some(PANEL), None);
        }
        let mut x = MARGIN;
        for (i, col) in s.columns.iter().enumerate() {
            let v = r.get(&col.column).unwrap_or(&Value::Null);
            let mut ink = INK;
            if col.shade
                && let Some(n) = num(Some(v))
            {
                let t = if shade_max[i] > 0.0 { (n / shade_max[i]) as f32 } else { 0.0 };
                c.rect(x + 0.2, ry + 0.2, widths[i] - 0.4, rh - 0.4, Some(Rgb8::hex(0xEAF1FB).mix(Rgb8::hex(0x2F6BD0), t)), None);
                if t > 0.55 {
                    ink = Rgb8(255, 255, 255);
                }
            }
            let label = match (col.format, v) {
                (Format::Text, Value::String(s)) => s.clone(),
                _ if !numeric[i] => {
                    let t = text(Some(v));
                    s.x_labels.get(&t).map(|l| l.get(lang).to_string()).unwrap_or(t)
                }
                _ => fmt::value(v, col.format, lang),
            };
            let (tx, align) = if numeric[i] { (x + widths[i] - 2.0, Align::Right) } else { (x + 2.0, Align::Left) };
            c.text(tx, ry + 4.1, &c.fit(&label, 7.0, false, widths[i] - 3.0), 7.0, false, ink, align);
            x += widths[i];
        }
        ry += rh;
    }
    c.line(&[(MARGIN, ry), (MARGIN + CONTENT_W, ry)], RULE, 0.5);
    c.y = ry + 6.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(393_437_000.0), (400_000_000.0, 100_000_000.0));
        assert_eq!(nice_axis(1163.0), (1500.0, 500.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
    }
}
