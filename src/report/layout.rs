//! Page layout: which page each section starts on and how tall each chart
//! is drawn, so that a printed page is full.
//!
//! Sections flow down the page at their natural height. A chart that does
//! not fit the rest of a page may shrink to 70 % of its body to
//! stay on it; otherwise it starts the next page, and the charts of the page
//! it leaves grow (up to twice their body) to fill the space. Tables
//! split across pages by themselves. The last page is left as it ends.

use super::canvas::{BOTTOM, Canvas, MARGIN};
use super::charts::{self, Row, TABLE_ROW};
use super::def::{Kind, Lang, Section};

/// How much a chart's body may shrink to and grow by, as fractions of it.
const SHRINK_TO: f32 = 0.7;
const GROW_BY: f32 = 1.0;

/// A chart on the page being laid out. Its title and note and the gap under
/// it are fixed; only its body is flexible.
struct Placed {
    section: usize,
    body: f32,
    flexible: bool,
}

/// The height each chart section is drawn at (`None` for tables, which
/// lay themselves out), starting at `start_y` on the first page.
pub fn plan(c: &Canvas, sections: &[Section], data: &[Vec<Row>], lang: Lang, start_y: f32) -> Vec<Option<f32>> {
    let mut heights: Vec<Option<f32>> = vec![None; sections.len()];
    let mut page: Vec<Placed> = Vec::new();
    let mut y = start_y;
    for (i, (s, rows)) in sections.iter().zip(data).enumerate() {
        if s.new_page && y > MARGIN + 1.0 {
            grow(&mut page, &mut heights, BOTTOM - y);
            y = MARGIN;
        }
        if s.kind == Kind::Table {
            let (head, start) = charts::table_start(c, s, rows, lang);
            if y + start > BOTTOM && y > MARGIN + 1.0 {
                grow(&mut page, &mut heights, BOTTOM - y);
                y = MARGIN;
            }
            y += head;
            if rows.is_empty() {
                y += TABLE_ROW * 2.0 + 6.0;
                continue;
            }
            let mut ry = y + TABLE_ROW;
            for _ in rows {
                if ry + TABLE_ROW > BOTTOM {
                    // The table fills this page to the bottom.
                    page.clear();
                    ry = MARGIN + TABLE_ROW;
                }
                ry += TABLE_ROW;
            }
            y = ry + 6.0;
            continue;
        }
        let natural = charts::natural_height(c, s, rows, lang);
        let head = charts::head_height(c, s, lang);
        let body = natural - head - 6.0;
        let flexible = !matches!(s.kind, Kind::Cards) && s.height.is_none();
        let fits = |y: f32, h: f32| y + h <= BOTTOM + 0.01;
        let h = if fits(y, natural) || y <= MARGIN + 1.0 {
            natural
        } else if flexible && fits(y, head + body * SHRINK_TO + 6.0) {
            BOTTOM - y
        } else {
            grow(&mut page, &mut heights, BOTTOM - y);
            y = MARGIN;
            natural
        };
        heights[i] = Some(h);
        page.push(Placed { section: i, body: h - head - 6.0, flexible });
        y += h;
    }
    heights
}

/// Shares the space `left` at the bottom of a finished page among its
/// flexible charts, in proportion to their bodies.
fn grow(page: &mut Vec<Placed>, heights: &mut [Option<f32>], left: f32) {
    let flex: f32 = page.iter().filter(|p| p.flexible).map(|p| p.body).sum();
    if left > 0.5 && flex > 0.0 {
        for p in page.iter().filter(|p| p.flexible) {
            let extra = (left * p.body / flex).min(p.body * GROW_BY);
            if let Some(h) = heights[p.section].as_mut() {
                *h += extra;
            }
        }
    }
    page.clear();
}
