//! Report definitions: `reports/*.yaml`.
//!
//! ```yaml
//! title: { ko: 주간 KPI 리포트, en: Weekly KPI report }
//! sections:
//!   - type: cards
//!     query: sql/kpi/headline.sql
//!     metrics:
//!       - { key: revenue, label: { ko: 매출, en: Revenue }, format: won }
//!   - type: bars
//!     title: { ko: 일별 매출, en: Daily revenue }
//!     query: sql/kpi/daily.sql
//!     x: day
//!     series:
//!       - { column: this_revenue, label: { ko: 이번 주, en: This week } }
//!     format: won
//! ```
//!
//! Every query runs with `$1` and `$2` bound to the start and end of the
//! reported period (whole days in the DAG's time zone).

use schemars::JsonSchema;
use serde::Deserialize;

/// Text in Korean and English, or one string for both.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Text {
    Same(String),
    Both { ko: String, en: String },
}

impl Text {
    pub fn get(&self, lang: Lang) -> &str {
        match (self, lang) {
            (Text::Same(s), _) => s,
            (Text::Both { ko, .. }, Lang::Ko) => ko,
            (Text::Both { en, .. }, Lang::En) => en,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    #[default]
    Ko,
    En,
}

/// How numbers are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// An amount in Korean won.
    Won,
    /// A whole number.
    #[default]
    Count,
    /// A ratio (0.25) shown as a percent.
    Ratio,
    /// A number already in percent (25.0).
    Percent,
    /// A decimal number with one digit.
    Decimal,
    /// Text as it is.
    Text,
}

/// A report.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportDef {
    pub title: Text,
    pub subtitle: Option<Text>,
    /// The language when the task does not say: ko (default) or en.
    #[serde(default)]
    pub lang: Lang,
    /// PostgreSQL settings for the report's queries, applied to each query's
    /// own read-only transaction, e.g. `{jit: "off", work_mem: 64MB}`:
    /// analytic queries over a large week gain from more sort memory and
    /// lose to JIT compilation.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// How many of the report's queries run at once (at least 1, and no more
    /// than the connection pool's 8 however high; default: the number of
    /// CPU cores where sluice runs, from 2 to 8). The queries of
    /// the lifetime value models start first, since their customers are
    /// then fitted: the longest query gets a core of its own while the
    /// others share the rest, instead of every query slowing every other.
    pub parallel_queries: Option<std::num::NonZeroUsize>,
    /// A query giving one row per day of the period with `day` (text) and
    /// `loaded` (whether the day has data). When a day has none, the first
    /// page says the period is incomplete and the cards show no change
    /// against the previous period.
    pub coverage: Option<String>,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Headline cards: one row per metric (`metric`, `value`, `previous`).
    Cards,
    /// Vertical bars, one group per `x`, one bar per series.
    Bars,
    /// Horizontal bars: one per row, labelled by `x`.
    Hbars,
    /// Lines, one per series, over `x`.
    Lines,
    /// A grid of `rows` x `cols` coloured by `value`.
    Heatmap,
    /// A funnel: one step per row (`x`), sized by the first series.
    Funnel,
    /// A table of the given columns; `shade` columns are coloured by value.
    Table,
}

/// Where a section's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The section's `query`, on the report task's connection (default).
    #[default]
    Warehouse,
    /// The pipeline's own runs in the period, one row per DAG: `dag_id`,
    /// `runs`, `succeeded`, `failed`, `unfinished` (the report's own run
    /// left out). No query.
    Pipeline,
}

/// A model applied to a section's rows before they are drawn.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// `clv`: customer lifetime value. The query gives one row per customer
    /// (`frequency`: repeat purchases, `recency` and `age`: weeks from the
    /// first to the last purchase and to the period's end, `monetary`: the
    /// mean value of the repeat purchases, `historical`: revenue so far),
    /// plus the column named by `by`. BG/NBD and Gamma-Gamma are fitted on
    /// all customers; the rows drawn are one per value of `by`: `customers`,
    /// `historical` and `predicted` (mean per customer, the next
    /// `horizon_weeks`) and `predicted_total`.
    pub kind: ModelKind,
    /// The column the customers are grouped by.
    pub by: String,
    /// The horizon of the prediction, in weeks. Default 52.
    pub horizon_weeks: Option<f64>,
    /// The order of the groups (values of `by`); others follow.
    #[serde(default)]
    pub order: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Clv,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Section {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub title: Option<Text>,
    /// A line under the title.
    pub note: Option<Text>,
    /// The SQL file, relative to the project root (not for `source: pipeline`).
    pub query: Option<String>,
    #[serde(default)]
    pub source: Source,
    /// A model computed from the query's rows (customer lifetime value).
    pub model: Option<Model>,
    /// The column of category labels (bars, lines, funnel, hbars).
    pub x: Option<String>,
    /// Value columns drawn as series.
    #[serde(default)]
    pub series: Vec<Series>,
    /// How values are shown.
    #[serde(default)]
    pub format: Format,
    /// Cards: the metrics, in order.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Tables: the columns, in order.
    #[serde(default)]
    pub columns: Vec<ColumnDef>,
    /// Heatmap: the row, column and value columns, and the labels of row
    /// and column values (`{1: 월}`).
    pub rows: Option<String>,
    pub cols: Option<String>,
    pub value: Option<String>,
    #[serde(default)]
    pub row_labels: Vec<Text>,
    #[serde(default)]
    pub col_labels: Vec<Text>,
    /// Labels of `x` values (e.g. segment names), by value.
    #[serde(default)]
    pub x_labels: std::collections::BTreeMap<String, Text>,
    /// Start the section on a new page.
    #[serde(default)]
    pub new_page: bool,
    /// Height in millimetres (charts).
    pub height: Option<f32>,
    /// The value axis's title, with its unit (charts).
    pub y_title: Option<Text>,
    /// The category axis's title, with its unit (charts, heatmap columns).
    pub x_title: Option<Text>,
    /// What a heatmap's colour scale measures.
    pub value_title: Option<Text>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub column: String,
    pub label: Text,
    /// A comparison series (last week): drawn lighter, dashed, and under
    /// the others.
    #[serde(default)]
    pub comparison: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// The `metric` value of the row.
    pub key: String,
    pub label: Text,
    #[serde(default)]
    pub format: Format,
    /// Whether a fall is good news (cancellation rate): colours the change.
    #[serde(default)]
    pub lower_is_better: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub column: String,
    pub label: Text,
    #[serde(default)]
    pub format: Format,
    /// Colour the cell by its value (cohort tables).
    #[serde(default)]
    pub shade: bool,
    /// Relative width (default 1).
    pub width: Option<f32>,
}

/// Formats won amounts and other numbers for people.
pub mod fmt {
    use super::{Format, Lang};

    /// `1234567` -> `1,234,567`.
    pub fn thousands(v: i128) -> String {
        let neg = v < 0;
        let s = v.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if neg { format!("-{out}") } else { out }
    }

    /// The exact amount: `123,456,700원` / `₩123,456,700`.
    pub fn won_exact(v: f64, lang: Lang) -> String {
        let n = thousands(v.round() as i128);
        match lang {
            Lang::Ko => format!("{n}원"),
            Lang::En => format!("₩{n}"),
        }
    }

    /// A short amount for cards and axes: `1.23억원`, `3,450만원`,
    /// `9,800원`; in English `₩1.23B`, `₩34.5M`, `₩9,800`.
    pub fn won_short(v: f64, lang: Lang) -> String {
        let a = v.abs();
        let sign = if v < 0.0 { "-" } else { "" };
        match lang {
            Lang::Ko => {
                if a >= 1e8 {
                    format!("{sign}{:.2}억원", a / 1e8).replace(".00억", "억")
                } else if a >= 1e4 {
                    format!("{sign}{}만원", thousands((a / 1e4).round() as i128))
                } else {
                    format!("{sign}{}원", thousands(a.round() as i128))
                }
            }
            Lang::En => {
                if a >= 1e9 {
                    format!("{sign}₩{:.2}B", a / 1e9)
                } else if a >= 1e6 {
                    format!("{sign}₩{:.1}M", a / 1e6)
                } else {
                    format!("{sign}₩{}", thousands(a.round() as i128))
                }
            }
        }
    }

    /// An axis tick: like `won_short` without the currency word.
    pub fn axis(v: f64, f: Format, lang: Lang) -> String {
        match f {
            Format::Won => match lang {
                Lang::Ko if v.abs() >= 1e8 => format!("{}억", trim(v / 1e8)),
                Lang::Ko if v.abs() >= 1e4 => format!("{}만", thousands((v / 1e4).round() as i128)),
                Lang::En if v.abs() >= 1e9 => format!("{}B", trim(v / 1e9)),
                Lang::En if v.abs() >= 1e6 => format!("{}M", trim(v / 1e6)),
                _ => thousands(v.round() as i128),
            },
            Format::Ratio => format!("{}%", trim(v * 100.0)),
            Format::Percent => format!("{}%", trim(v)),
            _ => {
                if v.fract().abs() < 1e-9 {
                    thousands(v as i128)
                } else {
                    trim(v)
                }
            }
        }
    }

    fn trim(v: f64) -> String {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }

    /// A value in a table cell or card.
    pub fn value(v: &serde_json::Value, f: Format, lang: Lang) -> String {
        let num = match v {
            serde_json::Value::Null => return "–".into(),
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.parse::<f64>().ok().filter(|_| f != Format::Text),
            serde_json::Value::Bool(b) => return b.to_string(),
            other => return other.to_string(),
        };
        let Some(x) = num else {
            return v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        };
        match f {
            Format::Won => won_exact(x, lang),
            Format::Count => thousands(x.round() as i128),
            Format::Ratio => format!("{:.1}%", x * 100.0),
            Format::Percent => format!("{x:.1}%"),
            Format::Decimal => format!("{x:.1}"),
            Format::Text => v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
        }
    }

    /// The change between two values: `▲ 3.2%`, `▼ 1.0%p` for ratios, or
    /// `–` when there is nothing to compare with (never a division by zero).
    pub fn change(now: Option<f64>, prev: Option<f64>, f: Format) -> (String, i8) {
        match (now, prev) {
            (Some(n), Some(p)) if matches!(f, Format::Ratio) => {
                let d = (n - p) * 100.0;
                let arrow = if d > 0.005 {
                    "▲"
                } else if d < -0.005 {
                    "▼"
                } else {
                    "="
                };
                (format!("{arrow} {:.1}%p", d.abs()), sign(d))
            }
            (Some(n), Some(p)) if p.abs() > f64::EPSILON => {
                let d = (n - p) / p.abs() * 100.0;
                let arrow = if d > 0.05 {
                    "▲"
                } else if d < -0.05 {
                    "▼"
                } else {
                    "="
                };
                (format!("{arrow} {:.1}%", d.abs()), sign(d))
            }
            _ => ("–".into(), 0),
        }
    }

    fn sign(d: f64) -> i8 {
        if d > 0.0 {
            1
        } else if d < 0.0 {
            -1
        } else {
            0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn korean_won() {
            assert_eq!(won_exact(123456700.0, Lang::Ko), "123,456,700원");
            assert_eq!(won_short(263336330.0, Lang::Ko), "2.63억원");
            assert_eq!(won_short(34_500_000.0, Lang::Ko), "3,450만원");
            assert_eq!(won_short(9800.0, Lang::Ko), "9,800원");
            assert_eq!(won_short(2_633_363_300.0, Lang::En), "₩2.63B");
            assert_eq!(axis(150_000_000.0, Format::Won, Lang::Ko), "1.5억");
        }

        #[test]
        fn changes_never_divide_by_zero() {
            assert_eq!(change(Some(110.0), Some(100.0), Format::Won).0, "▲ 10.0%");
            assert_eq!(change(Some(5.0), Some(0.0), Format::Count).0, "–");
            assert_eq!(change(None, Some(1.0), Format::Count).0, "–");
            assert_eq!(change(Some(0.03), Some(0.05), Format::Ratio).0, "▼ 2.0%p");
        }
    }
}
