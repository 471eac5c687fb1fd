//! PDF reports: a definition (`reports/*.yaml`) names SQL queries and how
//! to draw their results; [`render`] lays the sections out on A4 pages as
//! vector graphics with an embedded Korean font.
//!
//! Invariant: this module does no IO beyond reading font files; queries are
//! run by the `report` task, which hands the rows in.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;

pub mod canvas;
pub mod charts;
pub mod clv;
pub mod def;
pub mod layout;

use canvas::*;
pub use charts::Row;
use def::{Lang, ReportDef};

/// The period a report covers: `[start, end)` in local wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub tz: Tz,
}

impl Period {
    fn describe(&self, lang: Lang) -> String {
        let last = self.end - chrono::Duration::seconds(1);
        let ko_day = |d: NaiveDateTime| {
            ["월", "화", "수", "목", "금", "토", "일"][d.date().format("%u").to_string().parse::<usize>().unwrap_or(1) - 1]
        };
        match lang {
            Lang::Ko => {
                format!("{} ({}) ~ {} ({})", self.start.format("%Y-%m-%d"), ko_day(self.start), last.format("%Y-%m-%d"), ko_day(last))
            }
            Lang::En => format!("{} – {}", self.start.format("%a %Y-%m-%d"), last.format("%a %Y-%m-%d")),
        }
    }
}

/// Finds the regular and bold faces of NanumGothic: `reports/fonts/` in the
/// project first (for a font shipped with the project), then the system's
/// (Debian's `fonts-nanum`).
pub fn find_fonts(project_root: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let dirs = [project_root.join("reports/fonts"), PathBuf::from("/usr/share/fonts/truetype/nanum")];
    for d in &dirs {
        let (r, b) = (d.join("NanumGothic.ttf"), d.join("NanumGothicBold.ttf"));
        if r.exists() {
            let regular = std::fs::read(&r).map_err(|e| format!("{}: {e}", r.display()))?;
            let bold = if b.exists() { std::fs::read(&b).map_err(|e| format!("{}: {e}", b.display()))? } else { regular.clone() };
            return Ok((regular, bold));
        }
    }
    Err(format!(
        "the Korean font NanumGothic was not found in {}; install it (`apt-get install fonts-nanum`) or put NanumGothic.ttf and NanumGothicBold.ttf in reports/fonts/",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
    ))
}

pub struct Input<'a> {
    pub def: &'a ReportDef,
    pub lang: Lang,
    pub period: Period,
    pub generated: DateTime<Utc>,
    /// Rows of each section's query, in section order.
    pub data: &'a [Vec<Row>],
    pub fonts: &'a (Vec<u8>, Vec<u8>),
    /// Days of the period without data (`MM-DD`): the report is incomplete.
    pub missing_days: &'a [String],
}

/// Renders a report: the PDF's bytes and its page count.
pub fn render(i: &Input<'_>) -> Result<(Vec<u8>, usize), String> {
    let (c, footer) = compose(i)?;
    let pages = c.page_count();
    Ok((c.finish(footer, i.generated.timestamp())?, pages))
}

/// Renders a report as SVG pages: the same drawing as [`render`]'s PDF,
/// for the web dashboard.
pub fn render_svg(i: &Input<'_>) -> Result<Vec<String>, String> {
    let (c, footer) = compose(i)?;
    Ok(c.finish_svg(footer))
}

type Footer = Box<dyn Fn(&mut Canvas, usize, usize)>;

/// Draws every page of a report; returns the canvas and its page footer.
fn compose(i: &Input<'_>) -> Result<(Canvas, Footer), String> {
    let title = i.def.title.get(i.lang).to_string();
    let mut c = Canvas::new(&title, &i.fonts.0, &i.fonts.1)?;
    // Title block.
    c.rect(0.0, 0.0, PAGE_W, 30.0, Some(Rgb8::hex(0x1E2A3A)), None);
    c.text(MARGIN, 14.0, &title, 19.0, true, Rgb8(255, 255, 255), Align::Left);
    let period_label = match i.lang {
        Lang::Ko => "기간",
        Lang::En => "Period",
    };
    let sub = match &i.def.subtitle {
        Some(s) => format!("{} · {period_label} {}", s.get(i.lang), i.period.describe(i.lang)),
        None => format!("{period_label} {}", i.period.describe(i.lang)),
    };
    c.text(MARGIN, 22.5, &sub, 9.5, false, Rgb8::hex(0xC9D3E0), Align::Left);
    c.y = 36.0;
    let incomplete = !i.missing_days.is_empty();
    if incomplete {
        // Said first: the numbers below cover only part of the period.
        let days = i.missing_days.join(", ");
        let (head, body) = match i.lang {
            Lang::Ko => (
                "불완전한 기간".to_string(),
                format!(
                    "{days}의 데이터가 아직 적재되지 않았습니다. 이 기간의 수치는 일부 날짜만 반영하며, 전주 대비 변화는 표시하지 않습니다."
                ),
            ),
            Lang::En => (
                "Incomplete period".to_string(),
                format!(
                    "No data is loaded yet for {days}. The numbers below cover part of the period; changes against last week are not shown."
                ),
            ),
        };
        c.rect(MARGIN, c.y, CONTENT_W, 11.0, Some(Rgb8::hex(0xFFF4E0)), Some((Rgb8::hex(0xE0A040), 0.5)));
        c.text(MARGIN + 3.0, c.y + 4.5, &head, 8.5, true, Rgb8::hex(0x8A5300), Align::Left);
        c.text(MARGIN + 3.0, c.y + 8.7, &c.fit(&body, 7.0, false, CONTENT_W - 6.0), 7.0, false, INK, Align::Left);
        c.y += 15.0;
    }
    let heights = layout::plan(&c, &i.def.sections, i.data, i.lang, c.y);
    for ((s, rows), h) in i.def.sections.iter().zip(i.data).zip(heights) {
        charts::draw(&mut c, s, rows, i.lang, incomplete, h);
    }
    let local = i.generated.with_timezone(&i.period.tz);
    let generated = match i.lang {
        Lang::Ko => format!("생성 {}", local.format("%Y-%m-%d %H:%M %Z")),
        Lang::En => format!("Generated {}", local.format("%Y-%m-%d %H:%M %Z")),
    };
    let period_text = format!("{period_label} {}", i.period.describe(i.lang));
    let footer: Footer = Box::new(move |c: &mut Canvas, page: usize, total: usize| {
        let y = PAGE_H - 9.0;
        c.line(&[(MARGIN, y - 4.0), (PAGE_W - MARGIN, y - 4.0)], RULE, 0.4);
        c.text(MARGIN, y, &period_text, 7.0, false, MUTED, Align::Left);
        c.text(PAGE_W / 2.0, y, &generated, 7.0, false, MUTED, Align::Center);
        c.text(PAGE_W - MARGIN, y, &format!("{page} / {total}"), 7.0, false, MUTED, Align::Right);
    });
    Ok((c, footer))
}
