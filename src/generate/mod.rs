//! `sluice generate`: an online shop's raw exports, day by day, the way a
//! real shop produces them, deterministic for a seed.
//!
//! For each day `{out}/{YYYY-MM-DD}/` holds:
//!
//! * `users.ndjson`: the day's sign-ups (day 0 also holds everyone who
//!   signed up before the window);
//! * `products.csv`: new products, CP949-encoded as Korean ERPs export them;
//! * `orders.csv`: the day's orders, one line per item;
//! * `partner_orders.xml`: the orders placed through the partner channel;
//! * `visits.log`: the application's visit / view / cart / purchase events.
//!
//! With `--dirty`, realistic faults are injected and listed in
//! `{out}/faults.json` so that tests can check each lands in quarantine.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub mod world;

use world::{AGE_BANDS, CATEGORIES, DayFactors};

/// Where `sluice generate` and `sluice demo` write, under the project root.
pub const DEFAULT_OUT: &str = "data/raw";

/// The version of what the generator writes: raised whenever the same
/// options give different data, so that data from an older generator is
/// made again.
pub const GENERATOR_VERSION: u64 = 2;

/// Whether `o.out` already holds exactly what `o` would generate (its
/// manifest records this generator version and the same options).
pub fn is_generated(o: &Options) -> bool {
    let Ok(text) = std::fs::read_to_string(o.out.join("manifest.json")) else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    if v["generator"].as_u64() != Some(GENERATOR_VERSION) {
        return false;
    }
    let mut want = serde_json::to_value(o).unwrap_or_default();
    let mut have = v["options"].clone();
    for x in [&mut want, &mut have] {
        if let Some(m) = x.as_object_mut() {
            m.remove("out");
        }
    }
    want == have && v["summary"]["orders"].as_u64().unwrap_or(0) > 0
}

/// What to generate.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub out: PathBuf,
    pub start: NaiveDate,
    pub days: u32,
    pub users: u32,
    pub products: u32,
    pub seed: u64,
    pub dirty: bool,
}

/// Totals of a generation.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub days: u32,
    pub users: u64,
    pub products: u64,
    pub orders: u64,
    pub order_lines: u64,
    pub visit_lines: u64,
    pub faults: u64,
    pub bytes: u64,
}

/// An injected fault, for `faults.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub date: String,
    pub file: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

const GRADES: [(&str, f64, u32, f64); 4] =
    [("VIP", 5_000_000.0, 30, 2.4), ("GOLD", 2_000_000.0, 15, 1.7), ("SILVER", 500_000.0, 5, 1.25), ("BRONZE", 0.0, 0, 1.0)];

struct User {
    id: i64,
    band: usize,
    opt_in: bool,
    signup: NaiveDateTime,
    base: f64,
    orders: u32,
    /// (day index, amount) of paid orders in the last 180 days.
    recent: VecDeque<(u32, f64)>,
    grade_factor: f64,
}

struct Product {
    id: i64,
    category: usize,
    price: i64,
    created_day: i64,
    /// When it enters the catalogue: no order has it before.
    created: NaiveDateTime,
    weight: f64,
}

/// Sign-ups over the window follow a logistic S-curve whose steep part is
/// early: fast at first, then slower.
fn signup_counts(total: u64, days: u32) -> Vec<u64> {
    let mid = days as f64 * 0.2;
    let scale = (days as f64 * 0.12).max(1.0);
    let f = |x: f64| 1.0 / (1.0 + (-(x - mid) / scale).exp());
    let (f0, f1) = (f(0.0), f(days as f64));
    let mut out = Vec::with_capacity(days as usize);
    let mut given = 0u64;
    for d in 0..days {
        let cum = ((f(d as f64 + 1.0) - f0) / (f1 - f0) * total as f64).round() as u64;
        let cum = cum.min(total);
        out.push(cum - given);
        given = cum;
    }
    if let Some(last) = out.last_mut() {
        *last += total - given;
    }
    out
}

fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, f64)]) -> &'a T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (t, w) in items {
        if x < *w {
            return t;
        }
        x -= w;
    }
    &items[items.len() - 1].0
}

fn korean_name(rng: &mut ChaCha8Rng) -> String {
    let s = weighted(rng, world::SURNAMES);
    let a = world::GIVEN_FIRST[rng.random_range(0..world::GIVEN_FIRST.len())];
    let b = world::GIVEN_SECOND[rng.random_range(0..world::GIVEN_SECOND.len())];
    format!("{s}{a}{b}")
}

fn at(date: NaiveDate, secs: u32) -> NaiveDateTime {
    date.and_time(NaiveTime::from_num_seconds_from_midnight_opt(secs.min(86_399), 0).expect("valid"))
}

fn fmt_ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    lines: u64,
    cp949: bool,
}

impl Out {
    fn create(path: PathBuf, cp949: bool) -> Result<Out, GenError> {
        let f = File::create(&path).map_err(|e| GenError::Io(path.clone(), e))?;
        Ok(Out { path, w: BufWriter::with_capacity(1 << 16, f), lines: 0, cp949 })
    }
    fn line(&mut self, s: &str) -> Result<u64, GenError> {
        self.lines += 1;
        let r = if self.cp949 {
            let (bytes, _, _) = encoding_rs::EUC_KR.encode(s);
            self.w.write_all(&bytes).and_then(|_| self.w.write_all(b"\n"))
        } else {
            self.w.write_all(s.as_bytes()).and_then(|_| self.w.write_all(b"\n"))
        };
        r.map_err(|e| GenError::Io(self.path.clone(), e))?;
        Ok(self.lines)
    }
    fn finish(mut self) -> Result<u64, GenError> {
        self.w.flush().map_err(|e| GenError::Io(self.path.clone(), e))?;
        Ok(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }
}

/// One generated order line, before faults.
/// An order also reported in the partner's XML feed: order id, user id,
/// time, status and its items as (product id, quantity, unit price).
type PartnerOrder = (i64, i64, NaiveDateTime, &'static str, Vec<(i64, i64, i64)>);

struct Line {
    order_id: i64,
    user_id: i64,
    ordered_at: NaiveDateTime,
    status: &'static str,
    payment: &'static str,
    line_no: u32,
    product_id: i64,
    quantity: i64,
    unit_price: i64,
}

impl Line {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.order_id,
            self.user_id,
            fmt_ts(self.ordered_at),
            self.status,
            self.payment,
            self.line_no,
            self.product_id,
            self.quantity,
            self.unit_price
        )
    }
}

pub const ORDERS_HEADER: &str = "order_id,user_id,ordered_at,status,payment_method,line_no,product_id,quantity,unit_price";

/// Generates the exports. Deterministic: the same options give the same
/// bytes. The steps below draw from one random stream in a fixed order;
/// moving a draw changes every byte after it.
pub fn generate(o: &Options) -> Result<Summary, GenError> {
    if o.days == 0 || o.users == 0 || o.products == 0 {
        return Err(GenError::Invalid("--days, --users and --products must be at least 1".into()));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| GenError::Io(o.out.clone(), e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut sum = Summary { days: o.days, ..Default::default() };
    let mut faults: Vec<Fault> = Vec::new();

    let (products, product_rows) = catalogue(o, &mut rng);
    sum.products = products.len() as u64;

    // Users: 30% signed up before the window (exported on day 0), the rest
    // along the S-curve.
    let initial_users = (o.users as f64 * 0.3).round() as u64;
    let per_day = signup_counts(o.users as u64 - initial_users, o.days);
    let mut users: Vec<User> = Vec::with_capacity(o.users as usize);
    let mut user_rows: Vec<Vec<String>> = vec![Vec::new(); o.days as usize];
    let mut next_user = 1i64;
    for _ in 0..initial_users {
        let signup = at(o.start - Duration::days(rng.random_range(1..730)), rng.random_range(0..86_400));
        let u = new_user(o, &mut rng, &mut next_user, signup, 0, &mut user_rows);
        users.push(u);
    }

    let mut next_order = 1_000_000i64;
    // Session ids are unique across users and days.
    let mut next_session = 1u64;
    let mut unknown_product = 9_000_000i64;
    let mut unknown_user = 8_000_000i64;
    let hour_shares: Vec<Vec<f64>> = (0..AGE_BANDS).map(|b| (0..24).map(|h| world::hour_weight(b, h)).collect()).collect();

    for day in 0..o.days {
        let date = o.start + Duration::days(day as i64);
        let factors: DayFactors = world::day_factors(date);
        let dir = o.out.join(date.format("%Y-%m-%d").to_string());
        std::fs::create_dir_all(&dir).map_err(|e| GenError::Io(dir.clone(), e))?;
        let ds = date.format("%Y-%m-%d").to_string();

        // Today's sign-ups.
        for _ in 0..per_day[day as usize] {
            let signup = at(date, rng.random_range(0..86_400));
            let u = new_user(o, &mut rng, &mut next_user, signup, day as usize, &mut user_rows);
            users.push(u);
        }
        update_grades(&mut users, day);
        let m = market(&products, day, &factors);
        let dm = demand(&mut rng, &users, date, &factors, &hour_shares);
        let (mut lines, partner, mut visits) =
            take_orders(&mut rng, &mut users, &products, &m, &dm, day, &factors, &hour_shares, &mut next_order, &mut next_session);
        browse(&mut rng, &users, &products, &m, &dm, &hour_shares, &mut next_session, &mut visits);
        visits.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let extra_lines = inject_faults(
            o,
            &mut rng,
            day,
            &ds,
            &mut lines,
            &products,
            &mut faults,
            &mut next_order,
            &mut unknown_product,
            &mut unknown_user,
        );
        let cp949_orders = o.dirty && day % 30 == 7;
        if cp949_orders {
            faults.push(order_fault(&ds, "cp949 file", None));
        }
        let exports = (user_rows[day as usize].as_slice(), product_rows[day as usize].as_slice());
        write_day(o, &mut rng, &dir, &ds, exports, &lines, &extra_lines, &partner, &visits, cp949_orders, &mut sum, &mut faults)?;
    }

    sum.faults = faults.len() as u64;
    // The options without the output path: the same data wherever it is.
    let mut options = serde_json::to_value(o).unwrap_or_default();
    if let Some(m) = options.as_object_mut() {
        m.remove("out");
    }
    let manifest = serde_json::json!({ "generator": GENERATOR_VERSION, "options": options, "summary": sum });
    write_json(&o.out.join("manifest.json"), &manifest)?;
    if o.dirty {
        write_json(&o.out.join("faults.json"), &serde_json::to_value(&faults).unwrap_or_default())?;
    } else {
        let _ = std::fs::remove_file(o.out.join("faults.json"));
    }
    Ok(sum)
}

/// The catalogue: 70% exists before the window, the rest arrives daily.
/// Returns the products and each day's export rows.
fn catalogue(o: &Options, rng: &mut ChaCha8Rng) -> (Vec<Product>, Vec<Vec<String>>) {
    let cat_shares: Vec<(usize, f64)> = CATEGORIES.iter().enumerate().map(|(i, c)| (i, c.share)).collect();
    let betas: Vec<rand_distr::Beta<f64>> =
        CATEGORIES.iter().map(|c| rand_distr::Beta::new(c.alpha, c.beta).expect("valid shape")).collect();
    let initial_products = (o.products as f64 * 0.7).round() as u64;
    let mut products: Vec<Product> = Vec::with_capacity(o.products as usize);
    let mut product_rows: Vec<Vec<String>> = vec![Vec::new(); o.days as usize];
    for i in 0..o.products as u64 {
        let category = *weighted(rng, &cat_shares);
        let c = &CATEGORIES[category];
        let x: f64 = betas[category].sample(rng);
        let price = (((c.min + (c.max - c.min) * x) / 100.0).round() * 100.0) as i64;
        let day = if i < initial_products { -rng.random_range(1..400i64) } else { rng.random_range(0..o.days as i64) };
        let created = at(o.start + Duration::days(day), rng.random_range(8 * 3600..19 * 3600));
        let id = 100_000 + i as i64 + 1;
        let name = format!(
            "{} {} {}",
            world::ADJECTIVES[rng.random_range(0..world::ADJECTIVES.len())],
            c.nouns[rng.random_range(0..c.nouns.len())],
            rng.random_range(1..=999)
        );
        let stock = rng.random_range(0..500);
        let export_day = day.max(0) as usize;
        product_rows[export_day].push(format!("{id},{name},{},{price},{stock},{}", c.name, fmt_ts(created)));
        // Popularity: a Zipf-like weight over a random rank.
        let rank = rng.random_range(1..=o.products) as f64;
        products.push(Product { id, category, price, created_day: day, created, weight: 1.0 / rank.powf(0.8) });
    }
    (products, product_rows)
}

/// A customer who signs up at `signup`, exported on `export_day`.
fn new_user(
    o: &Options,
    rng: &mut ChaCha8Rng,
    next_user: &mut i64,
    signup: NaiveDateTime,
    export_day: usize,
    user_rows: &mut [Vec<String>],
) -> User {
    let id = *next_user;
    *next_user += 1;
    let gender = if rng.random_bool(0.5) { 'F' } else { 'M' };
    let band = *weighted(rng, &[(0usize, 27.0), (1, 26.0), (2, 22.0), (3, 16.0), (4, 9.0)]);
    let age = 20 + band as i64 * 10 + rng.random_range(0..10);
    let birth = (o.start - Duration::days(age * 365 + rng.random_range(0..365))).format("%Y-%m-%d").to_string();
    let region = weighted(rng, world::REGIONS);
    let opt_in = rng.random_bool(0.55);
    let status = if rng.random_bool(0.93) { "active" } else { "dormant" };
    let name = korean_name(rng);
    user_rows[export_day].push(format!(
        "{{\"id\": {id}, \"name\": \"{name}\", \"gender\": \"{gender}\", \"birth_date\": \"{birth}\", \"region\": \"{region}\", \"signup_at\": \"{}\", \"marketing_opt_in\": {opt_in}, \"status\": \"{status}\"}}",
        fmt_ts(signup)
    ));
    let band_factor = [1.0, 1.3, 1.2, 0.9, 0.6][band];
    let base = band_factor
        * if gender == 'F' { 1.1 } else { 0.95 }
        * if status == "active" { 1.0 } else { 0.15 }
        * if opt_in { 1.15 } else { 1.0 }
        * (0.4 + 1.6 * rng.random::<f64>().powi(2));
    User { id, band, opt_in, signup, base, orders: 0, recent: VecDeque::new(), grade_factor: 1.0 }
}

/// Grades as the shop would see them on `day`, from the last 180 days.
fn update_grades(users: &mut [User], day: u32) {
    for u in users.iter_mut() {
        while u.recent.front().is_some_and(|(d, _)| day - d > 180) {
            u.recent.pop_front();
        }
        let spend: f64 = u.recent.iter().map(|(_, a)| a).sum();
        let n = u.recent.len() as u32;
        u.grade_factor = GRADES.iter().find(|(_, s, c, _)| spend >= *s && n >= *c).map_or(1.0, |g| g.3);
    }
}

/// What sells on a day: best-sellers (the top fifth by popularity) and new
/// arrivals (the last 30 days), weighted by the day's category factors.
struct Market {
    best: Vec<usize>,
    best_index: WeightedIndex<f64>,
    fresh: Vec<usize>,
    fresh_index: Option<WeightedIndex<f64>>,
}

fn market(products: &[Product], day: u32, factors: &DayFactors) -> Market {
    let mut available: Vec<usize> = (0..products.len()).filter(|&i| products[i].created_day <= day as i64).collect();
    available.sort_by(|a, b| products[*b].weight.total_cmp(&products[*a].weight).then(a.cmp(b)));
    let cat_mult = |p: &Product| {
        let c = &CATEGORIES[p.category];
        (if c.gift { factors.gift } else { 1.0 }) * (if c.leisure { factors.leisure } else { 1.0 })
    };
    let best: Vec<usize> = available[..(available.len() / 5).max(1)].to_vec();
    let best_index = WeightedIndex::new(best.iter().map(|&i| products[i].weight * cat_mult(&products[i]))).expect("positive weights");
    let fresh: Vec<usize> = available.iter().copied().filter(|&i| products[i].created_day > day as i64 - 30).collect();
    let fresh_index =
        (!fresh.is_empty()).then(|| WeightedIndex::new(fresh.iter().map(|&i| cat_mult(&products[i]))).expect("positive weights"));

    Market { best, best_index, fresh, fresh_index }
}

/// A day's demand: who can order, how many orders in which hours, the
/// day's promotion and life events.
struct Demand {
    day_start: NaiveDateTime,
    active: Vec<usize>,
    n_orders: usize,
    per_hour: [usize; 24],
    promo: Vec<bool>,
    life: Vec<f64>,
}

fn demand(rng: &mut ChaCha8Rng, users: &[User], date: NaiveDate, factors: &DayFactors, hour_shares: &[Vec<f64>]) -> Demand {
    let day_start = date.and_hms_opt(0, 0, 0).expect("valid");
    let active: Vec<usize> = (0..users.len()).filter(|&i| users[i].signup < day_start + Duration::days(1)).collect();
    let n_orders = (0.12 * active.len() as f64 * factors.volume).round() as usize;
    let mut band_mix = [0f64; AGE_BANDS];
    for &i in &active {
        band_mix[users[i].band] += 1.0;
    }
    // Each order's hour is drawn from the day's curve: real traffic is noisy.
    let hour_weights: Vec<f64> = (0..24).map(|h| (0..AGE_BANDS).map(|b| band_mix[b] * hour_shares[b][h]).sum()).collect();
    let hour_index = WeightedIndex::new(&hour_weights).expect("positive weights");
    let mut per_hour = [0usize; 24];
    for _ in 0..n_orders {
        per_hour[hour_index.sample(rng)] += 1;
    }
    // The day's promotion reaches 20% of opted-in users; life events.
    let promo: Vec<bool> = users.iter().map(|u| u.opt_in && rng.random_bool(0.2)).collect();
    let life: Vec<f64> = users
        .iter()
        .map(|_| {
            let x: f64 = rng.random();
            if x < 0.85 {
                1.0
            } else if x < 0.97 {
                1.6
            } else {
                3.0
            }
        })
        .collect();

    Demand { day_start, active, n_orders, per_hour, promo, life }
}

/// A day's orders, hour by hour: who buys (weighted sampling without
/// replacement), what, and the session that led to each order. Returns the
/// order lines, the orders the partner also reports, and the visit events.
fn take_orders(
    rng: &mut ChaCha8Rng,
    users: &mut [User],
    products: &[Product],
    m: &Market,
    dm: &Demand,
    day: u32,
    factors: &DayFactors,
    hour_shares: &[Vec<f64>],
    next_order: &mut i64,
    next_session: &mut u64,
) -> (Vec<Line>, Vec<PartnerOrder>, Vec<(NaiveDateTime, String)>) {
    let Market { best, best_index, fresh, fresh_index } = m;
    let Demand { day_start, active, per_hour, promo, life, .. } = dm;
    let day_start = *day_start;
    let mut lines: Vec<Line> = Vec::new();
    let mut partner: Vec<PartnerOrder> = Vec::new();
    let mut visits: Vec<(NaiveDateTime, String)> = Vec::new();
    for hour in 0..24u32 {
        let n = per_hour[hour as usize];
        if n == 0 {
            continue;
        }
        let hour_start = day_start + Duration::hours(hour as i64);
        // Propensity: base x time of day x promotion x life event x
        // grade, made into a random key whose top values win
        // (weighted sampling without replacement).
        let mut returning: Vec<(f64, usize)> = Vec::new();
        let mut first_time: Vec<(f64, usize)> = Vec::new();
        for &i in active {
            let u = &users[i];
            if u.signup >= hour_start + Duration::hours(1) {
                continue;
            }
            let score = u.base * hour_shares[u.band][hour as usize] * if promo[i] { 1.3 } else { 1.0 } * life[i] * u.grade_factor;
            let key = rng.random::<f64>().ln() / score;
            if u.orders > 0 {
                returning.push((key, i))
            } else {
                first_time.push((key, i))
            };
        }
        let want_ret = ((n as f64) * 0.6).round() as usize;
        let take_ret = want_ret.min(returning.len()).max(n.saturating_sub(first_time.len()).min(returning.len()));
        let take_new = (n - take_ret).min(first_time.len());
        let mut chosen = top(&mut returning, take_ret);
        chosen.extend(top(&mut first_time, take_new));
        chosen.sort_unstable();
        for ui in chosen {
            let order_id = *next_order;
            *next_order += 1;
            let ordered_at = hour_start + Duration::seconds(rng.random_range(0..3600));
            let status = {
                let x: f64 = rng.random();
                if x < 0.015 {
                    "cancelled"
                } else if x < 0.03 {
                    "refunded"
                } else {
                    "paid"
                }
            };
            let payment = *weighted(rng, world::PAYMENT_METHODS);
            let mut n_items = 1;
            while n_items < 10 && rng.random_bool(0.42) {
                n_items += 1;
            }
            if life[ui] > 1.0 {
                n_items = (n_items + rng.random_range(1..=if life[ui] > 2.0 { 5 } else { 2 })).min(10);
            }
            let mut picked: Vec<usize> = Vec::new();
            let mut items = Vec::new();
            for _ in 0..n_items * 3 {
                if picked.len() == n_items {
                    break;
                }
                let p = match (&fresh_index, rng.random_bool(0.3)) {
                    (Some(fi), true) => fresh[fi.sample(rng)],
                    _ => best[best_index.sample(rng)],
                };
                // A product created later today cannot be ordered yet.
                if !picked.contains(&p) && products[p].created <= ordered_at {
                    picked.push(p);
                }
            }
            if picked.is_empty() {
                // Every draw was a product of later today: the best
                // seller that exists already.
                match best.iter().copied().find(|&p| products[p].created <= ordered_at) {
                    Some(p) => picked.push(p),
                    None => continue,
                }
            }
            let discount = if factors.events.contains(&"black_friday") { 0.8 } else { 1.0 };
            let mut total = 0i64;
            for (line_no, &p) in picked.iter().enumerate() {
                let quantity = *weighted(rng, &[(1i64, 72.0), (2, 18.0), (3, 6.0), (4, 2.5), (5, 1.5)]);
                let unit_price = ((products[p].price as f64 * discount / 10.0).round() * 10.0) as i64;
                total += quantity * unit_price;
                items.push((products[p].id, quantity, unit_price));
                lines.push(Line {
                    order_id,
                    user_id: users[ui].id,
                    ordered_at,
                    status,
                    payment,
                    line_no: line_no as u32 + 1,
                    product_id: products[p].id,
                    quantity,
                    unit_price,
                });
            }
            users[ui].orders += 1;
            if status == "paid" {
                users[ui].recent.push_back((day, total as f64));
            }
            if rng.random_bool(0.15) {
                partner.push((order_id, users[ui].id, ordered_at, status, items.clone()));
            }
            // The session that led to the order.
            let session = format!("s{next_session:010x}");
            *next_session += 1;
            // The session stays within the day: a day's log holds that day's events.
            let start = (ordered_at - Duration::seconds(rng.random_range(120..1800))).max(day_start);
            let span = (ordered_at - start).num_seconds().max(items.len() as i64 + 2);
            let uid = users[ui].id;
            visits.push((start, format!("event=visit session={session} user={uid}")));
            for (k, (pid, _, _)) in items.iter().enumerate() {
                let t = start + Duration::seconds((k as i64 + 1) * span / (items.len() as i64 + 2));
                visits.push((t.min(ordered_at), format!("event=view session={session} user={uid} product={pid}")));
            }
            let cart_at = (start + Duration::seconds(span * (items.len() as i64 + 1) / (items.len() as i64 + 2))).min(ordered_at);
            visits.push((cart_at, format!("event=cart session={session} user={uid} product={}", items[0].0)));
            visits.push((ordered_at, format!("event=purchase session={session} user={uid} order={order_id}")));
        }
    }
    (lines, partner, visits)
}

/// Sessions that did not end in a purchase: three per order.
fn browse(
    rng: &mut ChaCha8Rng,
    users: &[User],
    products: &[Product],
    m: &Market,
    dm: &Demand,
    hour_shares: &[Vec<f64>],
    next_session: &mut u64,
    visits: &mut Vec<(NaiveDateTime, String)>,
) {
    let (best, best_index) = (&m.best, &m.best_index);
    let Demand { day_start, active, n_orders, .. } = dm;
    let (day_start, n_orders) = (*day_start, *n_orders);
    for _ in 0..n_orders * 3 {
        let ui = active[rng.random_range(0..active.len())];
        let uid = users[ui].id;
        let hour = *weighted(rng, &hour_shares[users[ui].band].iter().enumerate().map(|(h, w)| (h as i64, *w)).collect::<Vec<_>>());
        // Late-evening sessions end before midnight.
        let t = day_start + Duration::hours(hour) + Duration::seconds(rng.random_range(0..3500));
        if t < users[ui].signup {
            continue;
        }
        let session = format!("s{next_session:010x}");
        *next_session += 1;
        visits.push((t, format!("event=visit session={session} user={uid}")));
        let x: f64 = rng.random();
        if x < 0.5 {
            let pid = products[best[best_index.sample(rng)]].id;
            visits.push((t + Duration::seconds(25), format!("event=view session={session} user={uid} product={pid}")));
            if x < 0.15 {
                visits.push((t + Duration::seconds(70), format!("event=cart session={session} user={uid} product={pid}")));
            }
        }
    }
}

/// The day's injected faults: extra lines (wrong field count, unparsable
/// value, duplicate) to insert after a line, and changed lines (unknown
/// product or user, negative quantity, a product not created yet), each
/// recorded in `faults`.
fn inject_faults(
    o: &Options,
    rng: &mut ChaCha8Rng,
    day: u32,
    ds: &str,
    lines: &mut [Line],
    products: &[Product],
    faults: &mut Vec<Fault>,
    next_order: &mut i64,
    unknown_product: &mut i64,
    unknown_user: &mut i64,
) -> Vec<(usize, String, &'static str)> {
    let mut extra_lines: Vec<(usize, String, &'static str)> = Vec::new();
    if o.dirty && !lines.is_empty() {
        let pick = |rng: &mut ChaCha8Rng, lines: &[Line]| rng.random_range(0..lines.len());
        if rng.random_bool(0.3) {
            let i = pick(rng, lines);
            let full = lines[i].csv();
            let cut: String = full.split(',').take(5).collect::<Vec<_>>().join(",");
            extra_lines.push((i, cut, "wrong field count"));
        }
        if rng.random_bool(0.2) {
            let i = pick(rng, lines);
            let l = &lines[i];
            extra_lines.push((
                i,
                format!("{},{},{},paid,카드,1,{},two,{}", *next_order, l.user_id, fmt_ts(l.ordered_at), l.product_id, l.unit_price),
                "unparsable value",
            ));
            *next_order += 1;
        }
        if rng.random_bool(0.25) {
            let i = pick(rng, lines);
            let oid = lines[i].order_id;
            lines[i].product_id = *unknown_product;
            *unknown_product += 1;
            faults.push(order_fault(ds, "unknown product", Some(oid)));
        }
        if rng.random_bool(0.2) {
            let i = pick(rng, lines);
            if lines[i].quantity > 0 {
                lines[i].quantity = -lines[i].quantity;
                faults.push(order_fault(ds, "negative quantity", Some(lines[i].order_id)));
            }
        }
        if rng.random_bool(0.1) {
            let i = pick(rng, lines);
            let oid = lines[i].order_id;
            for l in lines.iter_mut().filter(|l| l.order_id == oid) {
                l.user_id = *unknown_user;
            }
            *unknown_user += 1;
            faults.push(order_fault(ds, "unknown user", Some(oid)));
        }
        if rng.random_bool(0.2) {
            // An order for a product that enters the catalogue later the
            // same day: the export's clock and the catalogue disagree.
            let i = pick(rng, lines);
            let later = products.iter().find(|p| p.created_day == day as i64 && p.created > lines[i].ordered_at).map(|p| p.id);
            let clean = !faults.iter().any(|f| f.order_id == Some(lines[i].order_id));
            if let Some(pid) = later.filter(|_| clean) {
                let oid = lines[i].order_id;
                lines[i].product_id = pid;
                faults.push(order_fault(ds, "product not yet created", Some(oid)));
            }
        }
        if rng.random_bool(0.3) {
            let i = pick(rng, lines);
            extra_lines.push((i, lines[i].csv(), "duplicate line"));
        }
    }
    extra_lines
}

/// Writes a day's files (and draws the visit log's noise).
fn write_day(
    o: &Options,
    rng: &mut ChaCha8Rng,
    dir: &Path,
    ds: &str,
    exports: (&[String], &[String]),
    lines: &[Line],
    extra_lines: &[(usize, String, &'static str)],
    partner: &[PartnerOrder],
    visits: &[(NaiveDateTime, String)],
    cp949_orders: bool,
    sum: &mut Summary,
    faults: &mut Vec<Fault>,
) -> Result<(), GenError> {
    let (user_rows, product_rows) = exports;
    let mut f = Out::create(dir.join("users.ndjson"), false)?;
    for r in user_rows {
        f.line(r)?;
        sum.users += 1;
    }
    sum.bytes += f.finish()?;

    let mut f = Out::create(dir.join("products.csv"), true)?;
    f.line("id,name,category,price,stock,created_at")?;
    for r in product_rows {
        f.line(r)?;
    }
    sum.bytes += f.finish()?;

    let mut f = Out::create(dir.join("orders.csv"), cp949_orders)?;
    f.line(ORDERS_HEADER)?;
    let orders_today: std::collections::BTreeSet<i64> = lines.iter().map(|l| l.order_id).collect();
    sum.orders += orders_today.len() as u64;
    for (i, l) in lines.iter().enumerate() {
        f.line(&l.csv())?;
        sum.order_lines += 1;
        for (at_i, text, kind) in extra_lines {
            if *at_i == i {
                let n = f.line(text)?;
                let order_id = if *kind == "duplicate line" { Some(l.order_id) } else { None };
                faults.push(Fault { date: ds.to_string(), file: "orders.csv".into(), kind, line: Some(n), order_id });
            }
        }
    }
    sum.bytes += f.finish()?;

    let mut f = Out::create(dir.join("partner_orders.xml"), false)?;
    f.line("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
    f.line(&format!("<export channel=\"partner\" date=\"{ds}\">"))?;
    f.line("  <orders>")?;
    for (oid, uid, t, status, items) in partner {
        let total: i64 = items.iter().map(|(_, q, p)| q * p).sum();
        f.line(&format!("    <order id=\"{oid}\" placed_at=\"{}\">", fmt_ts(*t)))?;
        f.line(&format!("      <customer id=\"{uid}\"/>"))?;
        f.line(&format!("      <status>{status}</status>"))?;
        f.line(&format!("      <total currency=\"KRW\">{total}</total>"))?;
        f.line(&format!("      <items count=\"{}\"/>", items.len()))?;
        f.line("    </order>")?;
    }
    f.line("  </orders>")?;
    f.line("</export>")?;
    sum.bytes += f.finish()?;

    let mut f = Out::create(dir.join("visits.log"), false)?;
    let noise = if o.dirty && rng.random_bool(0.5) { rng.random_range(1..=3) } else { 0 };
    let noise_at: Vec<usize> = (0..noise).map(|_| rng.random_range(0..visits.len().max(1))).collect();
    for (i, (t, text)) in visits.iter().enumerate() {
        f.line(&format!("{}+09:00 INFO {text}", t.format("%Y-%m-%dT%H:%M:%S")))?;
        sum.visit_lines += 1;
        for _ in noise_at.iter().filter(|&&k| k == i) {
            let n = f.line(&format!("{}+09:00 WARN upstream timeout after 3000ms path=/api/recommend", t.format("%Y-%m-%dT%H:%M:%S")))?;
            faults.push(Fault { date: ds.to_string(), file: "visits.log".into(), kind: "log noise", line: Some(n), order_id: None });
        }
    }
    sum.bytes += f.finish()?;
    Ok(())
}

/// A fault in a day's orders.csv that is not tied to one line of the file.
fn order_fault(ds: &str, kind: &'static str, order_id: Option<i64>) -> Fault {
    Fault { date: ds.to_string(), file: "orders.csv".into(), kind, line: None, order_id }
}

/// The `k` entries with the largest keys.
fn top(v: &mut [(f64, usize)], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k < v.len() {
        v.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }
    v[..k.min(v.len())].iter().map(|(_, i)| *i).collect()
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), GenError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(|e| GenError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signups_follow_an_s_curve_and_sum_up() {
        let c = signup_counts(7000, 90);
        assert_eq!(c.iter().sum::<u64>(), 7000);
        let first: u64 = c[..30].iter().sum();
        let last: u64 = c[60..].iter().sum();
        assert!(first > 2 * last, "fast at first, then slower: {first} vs {last}");
    }

    /// The bytes of a small generation, pinned: a change to what is drawn
    /// or to the order of the draws changes them. When the change is meant,
    /// bump `GENERATOR_VERSION` (so that existing data is made again) and
    /// put the new hash here.
    #[test]
    fn the_draw_order_is_pinned() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let o = Options {
            out: dir.path().to_path_buf(),
            start: NaiveDate::from_ymd_opt(2024, 11, 25).unwrap(),
            days: 5,
            users: 300,
            products: 200,
            seed: 7,
            dirty: true,
        };
        generate(&o).unwrap();
        let mut h = sha2::Sha256::new();
        let sorted = |d: &Path| {
            let mut v: Vec<PathBuf> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
            v.sort();
            v
        };
        let entries = sorted(dir.path());
        let mut files: Vec<PathBuf> = entries.iter().filter(|p| p.is_file()).cloned().collect();
        for d in entries.iter().filter(|p| p.is_dir()) {
            files.extend(sorted(d));
        }
        for f in files.iter().filter(|f| !f.ends_with("manifest.json")) {
            h.update(f.strip_prefix(dir.path()).unwrap().to_string_lossy().as_bytes());
            h.update(std::fs::read(f).unwrap());
        }
        assert_eq!(hex::encode(h.finalize()), "840782b202d504bf0ed9126fe22b0f9145bcd332446b43468771d1e3988a4ef7");
    }

    #[test]
    fn same_seed_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |out: PathBuf| Options {
            out,
            start: NaiveDate::from_ymd_opt(2024, 11, 25).unwrap(),
            days: 5,
            users: 300,
            products: 200,
            seed: 7,
            dirty: true,
        };
        let a = generate(&opts(dir.path().join("a"))).unwrap();
        let _b = generate(&opts(dir.path().join("b"))).unwrap();
        assert!(a.orders > 50, "{a:?}");
        for f in ["2024-11-29/orders.csv", "2024-11-27/visits.log", "2024-11-25/users.ndjson", "faults.json"] {
            assert_eq!(std::fs::read(dir.path().join("a").join(f)).unwrap(), std::fs::read(dir.path().join("b").join(f)).unwrap(), "{f}");
        }
        let c = generate(&Options { seed: 8, ..opts(dir.path().join("c")) }).unwrap();
        assert!(c.orders > 50);
        assert_ne!(
            std::fs::read(dir.path().join("a/2024-11-29/orders.csv")).unwrap(),
            std::fs::read(dir.path().join("c/2024-11-29/orders.csv")).unwrap()
        );
    }
}
