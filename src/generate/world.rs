//! The shop's reference data: names, regions, categories with their price
//! ranges, and the calendar of events that move order volumes.

use chrono::{Datelike, NaiveDate, Weekday};

/// Korean surnames with their rough shares.
pub const SURNAMES: &[(&str, f64)] = &[
    ("김", 21.5),
    ("이", 14.7),
    ("박", 8.4),
    ("최", 4.7),
    ("정", 4.3),
    ("강", 2.4),
    ("조", 2.1),
    ("윤", 2.1),
    ("장", 2.0),
    ("임", 1.7),
    ("한", 1.5),
    ("오", 1.5),
    ("서", 1.4),
    ("신", 1.4),
    ("권", 1.4),
    ("황", 1.4),
    ("안", 1.3),
    ("송", 1.3),
    ("류", 1.2),
    ("홍", 1.1),
];

pub const GIVEN_FIRST: &[&str] =
    &["민", "서", "지", "도", "하", "예", "시", "주", "수", "현", "유", "은", "준", "채", "다", "소", "태", "승", "윤", "가"];
pub const GIVEN_SECOND: &[&str] =
    &["준", "연", "우", "윤", "호", "아", "원", "진", "빈", "은", "훈", "율", "희", "영", "린", "혁", "현", "나", "온", "결"];

/// Regions with their shares of the population.
pub const REGIONS: &[(&str, f64)] = &[
    ("서울", 18.6),
    ("경기", 26.4),
    ("인천", 5.8),
    ("부산", 6.4),
    ("대구", 4.6),
    ("광주", 2.8),
    ("대전", 2.8),
    ("울산", 2.1),
    ("세종", 0.8),
    ("강원", 3.0),
    ("충북", 3.1),
    ("충남", 4.1),
    ("전북", 3.4),
    ("전남", 3.5),
    ("경북", 5.0),
    ("경남", 6.4),
    ("제주", 1.3),
];

/// A category: name, price range in won, beta shape (a, b), share of the
/// catalogue, and product words.
pub struct Category {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    pub alpha: f64,
    pub beta: f64,
    pub share: f64,
    pub nouns: &'static [&'static str],
    pub gift: bool,
    pub leisure: bool,
}

pub const CATEGORIES: &[Category] = &[
    Category {
        name: "식품",
        min: 1_000.0,
        max: 60_000.0,
        alpha: 1.6,
        beta: 5.0,
        share: 18.0,
        nouns: &["김치", "쌀", "라면", "참기름", "된장", "고추장", "두부", "만두", "김", "견과류"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "정육",
        min: 9_000.0,
        max: 180_000.0,
        alpha: 2.0,
        beta: 4.0,
        share: 6.0,
        nouns: &["한우 등심", "한우 불고기", "돼지 삼겹살", "양념갈비", "닭가슴살", "오리훈제"],
        gift: true,
        leisure: false,
    },
    Category {
        name: "과일",
        min: 5_000.0,
        max: 90_000.0,
        alpha: 2.0,
        beta: 4.5,
        share: 6.0,
        nouns: &["감귤", "사과", "배", "샤인머스캣", "딸기", "한라봉", "복숭아"],
        gift: true,
        leisure: false,
    },
    Category {
        name: "생활용품",
        min: 2_000.0,
        max: 70_000.0,
        alpha: 1.5,
        beta: 4.0,
        share: 14.0,
        nouns: &["세제", "휴지", "칫솔", "샴푸", "수건", "주방세제", "물티슈"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "전자기기",
        min: 19_000.0,
        max: 2_400_000.0,
        alpha: 1.2,
        beta: 6.0,
        share: 9.0,
        nouns: &["무선이어폰", "태블릿", "노트북", "스마트워치", "공기청정기", "전기밥솥", "모니터"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "패션의류",
        min: 9_000.0,
        max: 350_000.0,
        alpha: 1.8,
        beta: 5.0,
        share: 15.0,
        nouns: &["니트", "코트", "청바지", "셔츠", "패딩", "운동화", "원피스"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "뷰티",
        min: 5_000.0,
        max: 180_000.0,
        alpha: 1.6,
        beta: 5.0,
        share: 10.0,
        nouns: &["선크림", "토너", "립스틱", "세럼", "클렌징폼", "향수"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "도서",
        min: 8_000.0,
        max: 60_000.0,
        alpha: 3.0,
        beta: 5.0,
        share: 7.0,
        nouns: &["소설", "에세이", "자기계발서", "요리책", "여행책", "만화"],
        gift: false,
        leisure: false,
    },
    Category {
        name: "스포츠레저",
        min: 9_000.0,
        max: 600_000.0,
        alpha: 1.4,
        beta: 5.0,
        share: 6.0,
        nouns: &["요가매트", "등산화", "텐트", "캠핑의자", "자전거 헬멧", "수영복"],
        gift: false,
        leisure: true,
    },
    Category {
        name: "여행레저",
        min: 40_000.0,
        max: 1_800_000.0,
        alpha: 1.5,
        beta: 4.0,
        share: 3.0,
        nouns: &["제주 항공권", "호텔 숙박권", "리조트 패키지", "워터파크 입장권", "캠핑장 예약"],
        gift: false,
        leisure: true,
    },
    Category {
        name: "선물세트",
        min: 19_000.0,
        max: 350_000.0,
        alpha: 2.0,
        beta: 3.5,
        share: 6.0,
        nouns: &["한우 선물세트", "과일 선물세트", "홍삼 세트", "참치 선물세트", "한과 세트", "건강즙 세트"],
        gift: true,
        leisure: false,
    },
];

pub const ADJECTIVES: &[&str] = &["프리미엄", "유기농", "국내산", "베스트", "실속", "대용량", "한정판", "친환경", "명품", "데일리"];

pub const PAYMENT_METHODS: &[(&str, f64)] = &[("카드", 62.0), ("간편결제", 28.0), ("계좌이체", 7.0), ("무통장입금", 3.0)];

/// Age bands, by decade: 20s, 30s, 40s, 50s, 60s+.
pub const AGE_BANDS: usize = 5;

/// The order-hour curve of an age band: a weight per hour of the day.
/// 20s peak around 21:00, 30s late evening and lunch, 40s evening, 50s
/// around 10:00, 60s+ in the morning.
pub fn hour_weight(band: usize, hour: u32) -> f64 {
    let h = hour as f64;
    let bump = |center: f64, width: f64, height: f64| {
        let d = (h - center).abs().min(24.0 - (h - center).abs());
        height * (-(d * d) / (2.0 * width * width)).exp()
    };
    let base = 0.05;
    base + match band {
        0 => bump(21.0, 2.0, 1.0) + bump(13.0, 2.0, 0.3),
        1 => bump(22.0, 1.8, 0.8) + bump(12.5, 1.2, 0.5),
        2 => bump(20.5, 2.0, 0.8) + bump(11.0, 2.0, 0.4),
        3 => bump(10.0, 1.8, 1.0) + bump(19.0, 2.5, 0.35),
        _ => bump(9.5, 1.8, 1.0) + bump(15.0, 2.5, 0.3),
    }
}

/// Public holidays that move shopping: (first day, last day).
fn seollal(year: i32) -> Option<(NaiveDate, NaiveDate)> {
    let d = |m, day| NaiveDate::from_ymd_opt(year, m, day);
    Some(match year {
        2023 => (d(1, 21)?, d(1, 24)?),
        2024 => (d(2, 9)?, d(2, 12)?),
        2025 => (d(1, 28)?, d(1, 30)?),
        2026 => (d(2, 16)?, d(2, 18)?),
        2027 => (d(2, 6)?, d(2, 9)?),
        _ => return None,
    })
}

fn chuseok(year: i32) -> Option<(NaiveDate, NaiveDate)> {
    let d = |m, day| NaiveDate::from_ymd_opt(year, m, day);
    Some(match year {
        2023 => (d(9, 28)?, d(9, 30)?),
        2024 => (d(9, 16)?, d(9, 18)?),
        2025 => (d(10, 5)?, d(10, 8)?),
        2026 => (d(9, 24)?, d(9, 26)?),
        2027 => (d(9, 14)?, d(9, 16)?),
        _ => return None,
    })
}

/// The day after the fourth Thursday of November (US Thanksgiving).
pub fn black_friday(year: i32) -> NaiveDate {
    let first = NaiveDate::from_ymd_opt(year, 11, 1).expect("valid");
    let offset = (7 + Weekday::Thu.num_days_from_monday() as i64 - first.weekday().num_days_from_monday() as i64) % 7;
    first + chrono::Duration::days(offset + 21 + 1)
}

/// What the calendar does to a day.
#[derive(Debug, Clone, PartialEq)]
pub struct DayFactors {
    /// Multiplier on the number of orders.
    pub volume: f64,
    /// Multiplier on gift categories (meat, fruit, gift sets).
    pub gift: f64,
    /// Multiplier on travel and leisure categories.
    pub leisure: f64,
    /// The named events of the day, for the generator's summary.
    pub events: Vec<&'static str>,
}

pub fn day_factors(d: NaiveDate) -> DayFactors {
    let mut f = DayFactors { volume: 1.0, gift: 1.0, leisure: 1.0, events: Vec::new() };
    for (name, holiday) in [("seollal", seollal(d.year()).or(seollal(d.year() + 1))), ("chuseok", chuseok(d.year()))] {
        if let Some((first, last)) = holiday {
            let before = (first - d).num_days();
            if (1..=14).contains(&before) {
                // The gift-buying fortnight before the holiday.
                f.volume *= 1.35;
                f.gift *= 3.0;
                f.events.push(name);
            } else if d >= first && d <= last {
                f.volume *= 0.6;
                f.events.push(name);
            }
        }
    }
    let bf = black_friday(d.year());
    if d == bf {
        f.volume *= 3.0;
        f.events.push("black_friday");
    } else if d > bf && (d - bf).num_days() <= 3 {
        f.volume *= 1.5;
        f.events.push("black_weekend");
    }
    let summer_start = NaiveDate::from_ymd_opt(d.year(), 7, 20).expect("valid");
    let summer_end = NaiveDate::from_ymd_opt(d.year(), 8, 20).expect("valid");
    if d >= summer_start && d <= summer_end {
        f.leisure *= 2.5;
        f.volume *= 1.1;
        f.events.push("summer");
    }
    let last_day =
        NaiveDate::from_ymd_opt(d.year() + (d.month() / 12) as i32, d.month() % 12 + 1, 1).expect("valid") - chrono::Duration::days(1);
    if d.day() <= 2 || d.day() == 25 || d == last_day {
        f.volume *= 1.25;
        f.events.push("payday");
    }
    if matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
        f.volume *= 0.9;
        f.leisure *= 1.3;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_events() {
        assert_eq!(black_friday(2024), NaiveDate::from_ymd_opt(2024, 11, 29).unwrap());
        assert_eq!(black_friday(2025), NaiveDate::from_ymd_opt(2025, 11, 28).unwrap());
        let bf = day_factors(NaiveDate::from_ymd_opt(2024, 11, 29).unwrap());
        assert!(bf.volume >= 3.0 && bf.events.contains(&"black_friday"));
        let before_chuseok = day_factors(NaiveDate::from_ymd_opt(2024, 9, 10).unwrap());
        assert!(before_chuseok.gift >= 3.0);
        let summer = day_factors(NaiveDate::from_ymd_opt(2025, 8, 1).unwrap());
        assert!(summer.leisure > 2.0);
        assert!(day_factors(NaiveDate::from_ymd_opt(2024, 10, 25).unwrap()).events.contains(&"payday"));
    }

    #[test]
    fn hour_curves_peak_where_they_should() {
        let peak = |band| (0..24).max_by(|a, b| hour_weight(band, *a).total_cmp(&hour_weight(band, *b))).unwrap();
        assert_eq!(peak(0), 21);
        assert_eq!(peak(3), 10);
    }
}
