//! A4 pages drawn with printpdf: text measured with the embedded font,
//! rectangles and lines, in millimetres from the top-left corner. Pages
//! flow: a section that does not fit starts a new page.
//!
//! Every primitive is recorded twice, as PDF operations and as SVG
//! elements, so that one drawing of a report gives the PDF (`finish`) and
//! the web dashboard's pages (`finish_svg`): the two never disagree.

use std::collections::BTreeMap;

use printpdf::*;

pub const PAGE_W: f32 = 210.0;
pub const PAGE_H: f32 = 297.0;
pub const MARGIN: f32 = 15.0;
pub const BOTTOM: f32 = PAGE_H - 18.0;
pub const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rgb8(pub u8, pub u8, pub u8);

impl Rgb8 {
    pub fn hex(v: u32) -> Rgb8 {
        Rgb8((v >> 16) as u8, (v >> 8) as u8, v as u8)
    }
    /// `#rrggbb`, for SVG.
    pub fn css(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
    fn color(self) -> Color {
        Color::Rgb(Rgb { r: self.0 as f32 / 255.0, g: self.1 as f32 / 255.0, b: self.2 as f32 / 255.0, icc_profile: None })
    }
    /// Linear blend towards `other` by `t` in [0, 1].
    pub fn mix(self, other: Rgb8, t: f32) -> Rgb8 {
        let t = t.clamp(0.0, 1.0);
        let m = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * t).round() as u8;
        Rgb8(m(self.0, other.0), m(self.1, other.1), m(self.2, other.2))
    }
}

pub const INK: Rgb8 = Rgb8(0x22, 0x2B, 0x38);
pub const MUTED: Rgb8 = Rgb8(0x6B, 0x76, 0x85);
pub const RULE: Rgb8 = Rgb8(0xD5, 0xDB, 0xE3);
pub const PANEL: Rgb8 = Rgb8(0xF4, 0xF6, 0xF9);
pub const GOOD: Rgb8 = Rgb8(0x1B, 0x8A, 0x5A);
pub const BAD: Rgb8 = Rgb8(0xC8, 0x3A, 0x3A);
pub const PALETTE: [Rgb8; 6] = [
    Rgb8(0x2F, 0x6B, 0xD0),
    Rgb8(0xB8, 0xC7, 0xDC),
    Rgb8(0xF2, 0x8E, 0x2B),
    Rgb8(0x59, 0xA1, 0x4F),
    Rgb8(0xE1, 0x57, 0x59),
    Rgb8(0x76, 0xB7, 0xB2),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Center,
    Right,
}

/// One face of the report's font. The whole font measures the text; the
/// PDF embeds a subset of it, the glyphs drawn, made when it is saved.
struct Face {
    font: ParsedFont,
    id: FontId,
    upem: f32,
    /// Every character drawn in this face that the font has, with its
    /// glyph in the whole font.
    drawn: BTreeMap<char, u16>,
}

impl Face {
    fn new(bytes: &[u8]) -> Result<Face, String> {
        let mut warnings = Vec::new();
        let font = ParsedFont::from_bytes(bytes, 0, &mut warnings).ok_or("the font file could not be parsed")?;
        let upem = font.pdf_font_metrics.units_per_em.max(1) as f32;
        Ok(Face { font, id: FontId::new(), upem, drawn: BTreeMap::new() })
    }

    /// The advance of `c` in font units (a fallback for a character the
    /// font lacks, which the PDF shows as its missing glyph).
    fn advance(&self, c: char) -> f32 {
        match self.font.lookup_glyph_index(c as u32) {
            Some(g) => f32::from(self.font.get_glyph_width(g).unwrap_or(0)),
            None => self.upem * 0.55,
        }
    }

    fn draw(&mut self, s: &str) {
        for c in s.chars() {
            if let Some(g) = self.font.lookup_glyph_index(c as u32) {
                self.drawn.insert(c, g);
            }
        }
    }

    /// The font to embed: the glyphs drawn only (a whole Korean font is
    /// megabytes), renumbered in the order they are given to the
    /// subsetter, `.notdef` first, which is the order allsorts keeps.
    fn subset(&self) -> Result<ParsedFont, String> {
        use allsorts::binary::read::ReadScope;
        use allsorts::font_data::FontData;
        use allsorts::subset::{CmapTarget, SubsetProfile, subset};
        use allsorts::tables::FontTableProvider;
        let mut glyphs: Vec<u16> = std::iter::once(0).chain(self.drawn.values().copied()).collect();
        glyphs.sort_unstable();
        glyphs.dedup();
        let whole = ReadScope::new(&self.font.original_bytes).read::<FontData<'_>>().map_err(|e| e.to_string())?;
        let provider = whole.table_provider(self.font.font_index as usize).map_err(|e| e.to_string())?;
        let bytes =
            subset(&provider, &glyphs, &SubsetProfile::Pdf, CmapTarget::Unicode).map_err(|e| format!("cannot subset the font: {e}"))?;
        let mut warnings = Vec::new();
        let mut font = ParsedFont::from_bytes(&bytes, 0, &mut warnings).ok_or("the font's subset could not be parsed")?;
        // A subset is named with a tag of six capitals, `ABCDEF+Name` (ISO
        // 32000-1, 9.6.4): the PDF calls a font without one complete.
        let tag: String = self.id.0.chars().filter(char::is_ascii_uppercase).take(6).collect();
        let name = provider.read_table_data(allsorts::tag::NAME).ok().and_then(|d| {
            ReadScope::new(&d).read::<allsorts::tables::NameTable<'_>>().ok()?.string_for_id(allsorts::tables::NameTable::POSTSCRIPT_NAME)
        });
        font.font_name = Some(format!("{tag}+{}", name.unwrap_or_else(|| "Font".into())));
        // Characters and advances by the subset's glyph numbers, from the
        // whole font: the subset's own character map need not cover them all.
        let new_id = |g: &u16| glyphs.binary_search(g).map(|i| i as u16).ok();
        font.codepoint_to_glyph = self.drawn.iter().filter_map(|(c, g)| Some((*c as u32, new_id(g)?))).collect();
        font.glyph_widths = glyphs.iter().enumerate().filter_map(|(i, g)| Some((i as u16, self.font.get_glyph_width(*g)?))).collect();
        Ok(font)
    }
}

pub struct Canvas {
    doc: PdfDocument,
    regular: Face,
    bold: Face,
    pages: Vec<Vec<Op>>,
    ops: Vec<Op>,
    /// The same drawing as SVG elements: finished pages and the current one.
    svg_pages: Vec<Vec<String>>,
    svg: Vec<String>,
    /// Inside `dashed_line`.
    dashed: bool,
    /// The layout cursor, in mm from the top of the page.
    pub y: f32,
}

/// Points to millimetres (SVG pages are in mm).
fn pt_mm(v: f32) -> f32 {
    v * 25.4 / 72.0
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn mm(v: f32) -> Pt {
    Pt(v * 72.0 / 25.4)
}

impl Canvas {
    pub fn new(title: &str, regular: &[u8], bold: &[u8]) -> Result<Canvas, String> {
        Ok(Canvas {
            doc: PdfDocument::new(title),
            regular: Face::new(regular)?,
            bold: Face::new(bold)?,
            pages: Vec::new(),
            ops: Vec::new(),
            svg_pages: Vec::new(),
            svg: Vec::new(),
            dashed: false,
            y: MARGIN,
        })
    }

    /// The width of `s` in mm at `size` points.
    pub fn width(&self, s: &str, size: f32, bold: bool) -> f32 {
        let f = if bold { &self.bold } else { &self.regular };
        let units: f32 = s.chars().map(|c| f.advance(c)).sum();
        units / f.upem * size * 25.4 / 72.0
    }

    /// Draws text with its baseline at `y` (mm from the top).
    pub fn text(&mut self, x: f32, y: f32, s: &str, size: f32, bold: bool, color: Rgb8, align: Align) {
        if s.is_empty() {
            return;
        }
        let w = self.width(s, size, bold);
        let x = match align {
            Align::Left => x,
            Align::Center => x - w / 2.0,
            Align::Right => x - w,
        };
        let face = if bold { &mut self.bold } else { &mut self.regular };
        face.draw(s);
        let id = face.id.clone();
        self.ops.extend([
            Op::StartTextSection,
            Op::SetFillColor { col: color.color() },
            Op::SetFont { font: PdfFontHandle::External(id), size: Pt(size) },
            Op::SetTextCursor { pos: Point { x: mm(x), y: mm(PAGE_H - y) } },
            Op::ShowText { items: vec![TextItem::Text(s.to_string())] },
            Op::EndTextSection,
        ]);
        self.svg.push(format!(
            r#"<text x="{x:.2}" y="{y:.2}" font-size="{:.3}"{} fill="{}" xml:space="preserve">{}</text>"#,
            pt_mm(size),
            if bold { r#" font-weight="700""# } else { "" },
            color.css(),
            xml_escape(s)
        ));
    }

    /// Shortens `s` with an ellipsis to fit `max` mm.
    pub fn fit(&self, s: &str, size: f32, bold: bool, max: f32) -> String {
        if self.width(s, size, bold) <= max {
            return s.to_string();
        }
        let mut out: String = s.to_string();
        while !out.is_empty() && self.width(&format!("{out}…"), size, bold) > max {
            out.pop();
        }
        format!("{out}…")
    }

    pub fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, fill: Option<Rgb8>, stroke: Option<(Rgb8, f32)>) {
        if w <= 0.0 || h <= 0.0 {
            return;
        }
        let mode = match (fill, stroke) {
            (Some(_), Some(_)) => PaintMode::FillStroke,
            (Some(_), None) => PaintMode::Fill,
            (None, Some(_)) => PaintMode::Stroke,
            (None, None) => return,
        };
        self.ops.push(Op::SaveGraphicsState);
        if let Some(f) = fill {
            self.ops.push(Op::SetFillColor { col: f.color() });
        }
        if let Some((c, t)) = stroke {
            self.ops.push(Op::SetOutlineColor { col: c.color() });
            self.ops.push(Op::SetOutlineThickness { pt: Pt(t) });
        }
        let mut r = Rect::from_xywh(mm(x), mm(PAGE_H - y - h), mm(w), mm(h));
        r.mode = Some(mode);
        self.ops.push(Op::DrawRectangle { rectangle: r });
        self.ops.push(Op::RestoreGraphicsState);
        let fill = fill.map_or("none".to_string(), Rgb8::css);
        let stroke = stroke.map_or(String::new(), |(c, t)| format!(r#" stroke="{}" stroke-width="{:.3}""#, c.css(), pt_mm(t)));
        self.svg.push(format!(r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{fill}"{stroke}/>"#));
    }

    pub fn line(&mut self, points: &[(f32, f32)], color: Rgb8, thickness: f32) {
        if points.len() < 2 {
            return;
        }
        self.ops.extend([
            Op::SaveGraphicsState,
            Op::SetOutlineColor { col: color.color() },
            Op::SetOutlineThickness { pt: Pt(thickness) },
            Op::DrawLine {
                line: Line {
                    points: points.iter().map(|(x, y)| LinePoint { p: Point { x: mm(*x), y: mm(PAGE_H - y) }, bezier: false }).collect(),
                    is_closed: false,
                },
            },
            Op::RestoreGraphicsState,
        ]);
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
        let dash = if self.dashed { format!(r#" stroke-dasharray="{:.3} {:.3}""#, pt_mm(3.0), pt_mm(2.0)) } else { String::new() };
        self.svg.push(format!(
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{:.3}"{dash}/>"#,
            pts.join(" "),
            color.css(),
            pt_mm(thickness)
        ));
    }

    /// A dashed line (comparison series).
    pub fn dashed_line(&mut self, points: &[(f32, f32)], color: Rgb8, thickness: f32) {
        if points.len() < 2 {
            return;
        }
        self.ops.push(Op::SaveGraphicsState);
        self.ops.push(Op::SetLineDashPattern { dash: LineDashPattern::new(0.0, &[3.0, 2.0]) });
        self.dashed = true;
        self.line(points, color, thickness);
        self.dashed = false;
        self.ops.push(Op::RestoreGraphicsState);
    }

    pub fn new_page(&mut self) {
        let ops = std::mem::take(&mut self.ops);
        self.pages.push(ops);
        let svg = std::mem::take(&mut self.svg);
        self.svg_pages.push(svg);
        self.y = MARGIN;
    }

    /// Starts a new page unless `height` mm fit below the cursor.
    pub fn ensure(&mut self, height: f32) {
        if self.y + height > BOTTOM + 0.01 && self.y > MARGIN + 1.0 {
            self.new_page();
        }
    }

    pub fn page_count(&self) -> usize {
        self.pages.len() + usize::from(!self.ops.is_empty())
    }

    /// Adds footers (given page number and count) and returns the PDF bytes.
    pub fn finish(mut self, footer: impl Fn(&mut Canvas, usize, usize), created_unix: i64) -> Result<Vec<u8>, String> {
        if !self.ops.is_empty() {
            self.new_page();
        }
        let pages = std::mem::take(&mut self.pages);
        let total = pages.len();
        let mut out = Vec::with_capacity(total);
        for (i, ops) in pages.into_iter().enumerate() {
            self.ops = ops;
            footer(&mut self, i + 1, total);
            out.push(PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), std::mem::take(&mut self.ops)));
        }
        let when = DateTime::from_unix_timestamp(created_unix).map_err(|e| e.to_string())?;
        self.doc.metadata.info.creation_date = when;
        self.doc.metadata.info.modification_date = when;
        self.doc.metadata.info.metadata_date = when;
        self.doc.metadata.info.creator = "sluice".into();
        self.doc.metadata.info.producer = concat!("sluice ", env!("CARGO_PKG_VERSION")).into();
        for face in [&self.regular, &self.bold] {
            self.doc.resources.fonts.map.insert(face.id.clone(), PdfFont::new(face.subset()?));
        }
        self.doc.with_pages(out);
        let mut warnings = Vec::new();
        Ok(self.doc.save(&PdfSaveOptions::default(), &mut warnings))
    }

    /// Adds footers and returns each page as an SVG document (A4, in mm),
    /// the same drawing as [`Canvas::finish`]'s PDF.
    pub fn finish_svg(mut self, footer: impl Fn(&mut Canvas, usize, usize)) -> Vec<String> {
        if !self.ops.is_empty() || !self.svg.is_empty() {
            self.new_page();
        }
        let pages = std::mem::take(&mut self.svg_pages);
        let total = pages.len();
        let mut out = Vec::with_capacity(total);
        for (i, elements) in pages.into_iter().enumerate() {
            self.svg = elements;
            footer(&mut self, i + 1, total);
            let body = std::mem::take(&mut self.svg).join("");
            out.push(format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" class="page" viewBox="0 0 {PAGE_W} {PAGE_H}" font-family="NanumGothic, 'Noto Sans KR', sans-serif" role="img" aria-label="page {} of {total}"><rect width="{PAGE_W}" height="{PAGE_H}" fill="white"/>{body}</svg>"#,
                i + 1
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text is measured with each glyph's own advance from the font (not
    /// the fallback for missing glyphs): right-aligned figures line up.
    #[test]
    fn text_is_measured_with_the_fonts_advances() {
        let (regular, bold) = crate::report::find_fonts(std::path::Path::new(".")).expect("fonts-nanum is installed by scripts/test.sh");
        let c = Canvas::new("t", &regular, &bold).unwrap();
        let w = |s: &str| c.width(s, 10.0, false);
        assert!(w("WWWW") > 2.0 * w("iiii"), "W {} i {}", w("WWWW"), w("iiii"));
        assert!(w("매출") > w("ab"));
        assert!((w("abc") - (w("a") + w("b") + w("c"))).abs() < 1e-4);
        // A 10 pt digit of NanumGothic is between 1.5 and 2.5 mm wide.
        assert!((1.5..2.5).contains(&w("0")), "{}", w("0"));
        assert!(c.width("0", 10.0, true) >= w("0"));
    }

    /// A glyph's outline in a TrueType font: its bytes in `glyf`, found
    /// through `loca`.
    fn outline(font: &[u8], glyph: u16) -> Vec<u8> {
        use allsorts::binary::read::ReadScope;
        use allsorts::font_data::FontData;
        use allsorts::tables::FontTableProvider;
        use allsorts::tag;
        let data = ReadScope::new(font).read::<FontData<'_>>().unwrap();
        let provider = data.table_provider(0).unwrap();
        let table = |t| provider.read_table_data(t).unwrap().into_owned();
        let (head, loca, glyf) = (table(tag::HEAD), table(tag::LOCA), table(tag::GLYF));
        let long = i16::from_be_bytes([head[50], head[51]]) == 1;
        let at = |i: usize| match long {
            true => u32::from_be_bytes(loca[4 * i..4 * i + 4].try_into().unwrap()) as usize,
            false => 2 * u16::from_be_bytes([loca[2 * i], loca[2 * i + 1]]) as usize,
        };
        glyf[at(glyph as usize)..at(glyph as usize + 1)].to_vec()
    }

    /// The PDF embeds a subset of each face, renumbered. A character given
    /// the wrong glyph there would still extract as the right text (through
    /// the PDF's ToUnicode map) while showing another letter, so this
    /// compares outlines: each character drawn is the whole font's glyph.
    #[test]
    fn the_embedded_subset_draws_each_character_with_its_own_glyph() {
        let (regular, bold) = crate::report::find_fonts(std::path::Path::new(".")).expect("fonts-nanum is installed by scripts/test.sh");
        let mut c = Canvas::new("t", &regular, &bold).unwrap();
        let drawn = "주간 KPI 리포트 · 매출 ₩1,234,567 (+12.5%) 고객 등급 VIP";
        c.text(10.0, 10.0, drawn, 10.0, false, INK, Align::Left);
        c.text(10.0, 20.0, "굵게 Bold 09", 10.0, true, INK, Align::Left);
        let subset = c.regular.subset().unwrap();
        assert!(
            subset.original_bytes.len() * 20 < regular.len(),
            "the subset is {} bytes of {}",
            subset.original_bytes.len(),
            regular.len()
        );
        for ch in drawn.chars() {
            let whole = c.regular.font.lookup_glyph_index(ch as u32).unwrap();
            let new = subset.lookup_glyph_index(ch as u32).unwrap_or_else(|| panic!("{ch:?} is not in the subset"));
            assert_ne!(new, 0, "{ch:?} maps to .notdef");
            assert_eq!(
                outline(&subset.original_bytes, new),
                outline(&regular, whole),
                "{ch:?}: glyph {new} of the subset, {whole} of the font"
            );
            assert_eq!(subset.get_glyph_width(new), c.regular.font.get_glyph_width(whole), "{ch:?}");
        }
        // The bold face keeps its own characters only.
        let bold_subset = c.bold.subset().unwrap();
        let name = subset.font_name.as_deref().unwrap();
        assert!(
            name.len() == "ABCDEF+NanumGothic".len() && name[..6].chars().all(|c| c.is_ascii_uppercase()) && name.ends_with("+NanumGothic"),
            "{name}"
        );
        assert!(bold_subset.lookup_glyph_index('굵' as u32).is_some() && bold_subset.lookup_glyph_index('매' as u32).is_none());
    }
}
