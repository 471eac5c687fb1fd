//! Customer lifetime value: the BG/NBD model of the number of purchases
//! (Fader, Hardie and Lee, "Counting Your Customers the Easy Way", 2005)
//! and the Gamma-Gamma model of their value (Fader, Hardie and Lee, "RFM
//! and CLV", 2005), fitted by maximum likelihood with argmin's Nelder-Mead,
//! as the Python `lifetimes` library does (whose CDNOW fits the tests
//! reproduce). Pure: summaries in, parameters and predictions out.
//!
//! A customer's summary, in weeks: `frequency` x (repeat purchases: the
//! purchase occasions after the first), `recency` t_x (from the first to
//! the last purchase), `age` T (from the first purchase to the end of the
//! observation), and `monetary` (the mean value of the repeat purchases).

use std::collections::HashMap;

use argmin::core::{CostFunction, Executor};
use argmin::solver::neldermead::NelderMead;

/// One customer's purchase history, summarised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub frequency: f64,
    pub recency: f64,
    pub age: f64,
    pub monetary: f64,
}

/// Fitted BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Fitted Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY { m } else { m + ((a - m).exp() + (b - m).exp()).ln() }
}

/// Minimises `f` over the logs of the parameters (so that they stay
/// positive), from `start`, with Nelder-Mead, until the simplex's costs
/// differ by less than 1e-9 (scipy's default for `lifetimes` is 1e-7 on
/// the parameters and the cost).
fn minimise(f: impl Fn(&[f64]) -> f64, start: &[f64]) -> Result<Vec<f64>, String> {
    struct Problem<F>(F);
    impl<F: Fn(&[f64]) -> f64> CostFunction for Problem<F> {
        type Param = Vec<f64>;
        type Output = f64;
        fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
            let v = (self.0)(p);
            Ok(if v.is_finite() { v } else { f64::MAX })
        }
    }
    let x0: Vec<f64> = start.iter().map(|v| v.ln()).collect();
    let mut simplex = vec![x0.clone()];
    for i in 0..x0.len() {
        let mut v = x0.clone();
        v[i] += 0.5;
        simplex.push(v);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-9).map_err(|e| e.to_string())?;
    let problem = Problem(|p: &[f64]| f(&p.iter().map(|v| v.exp()).collect::<Vec<_>>()));
    let res = Executor::new(problem, solver).configure(|s| s.max_iters(20_000)).run().map_err(|e| e.to_string())?;
    let best = res.state.best_param.ok_or("the fit found no parameters")?;
    Ok(best.iter().map(|v| v.exp()).collect())
}

/// Summaries grouped for the likelihoods, which a fit evaluates thousands
/// of times: customers with the same (x, t_x, T) count once, weighted by
/// their number, and sorted by x, so that the log-gamma terms of x alone
/// are computed once per distinct x rather than once per customer.
struct Histories {
    /// (x, t_x, T, customers), sorted.
    rows: Vec<(f64, f64, f64, f64)>,
    customers: f64,
}

impl Histories {
    fn new(data: &[Summary]) -> Histories {
        let mut v: Vec<(f64, f64, f64)> = data.iter().map(|s| (s.frequency, s.recency, s.age)).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let mut rows: Vec<(f64, f64, f64, f64)> = Vec::new();
        for (x, tx, t) in v {
            match rows.last_mut() {
                Some(last) if last.0 == x && last.1 == tx && last.2 == t => last.3 += 1.0,
                _ => rows.push((x, tx, t, 1.0)),
            }
        }
        Histories { rows, customers: data.len() as f64 }
    }
}

impl BgNbd {
    /// The mean negative log-likelihood of the summaries.
    pub fn neg_log_likelihood(&self, data: &[Summary]) -> f64 {
        self.grouped_nll(&Histories::new(data))
    }

    fn grouped_nll(&self, h: &Histories) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let ab = ln_gamma(a + b) - ln_gamma(b);
        let (ln_r, r_ln_alpha, ln_a) = (ln_gamma(r), r * alpha.ln(), a.ln());
        let mut total = 0.0;
        let mut x_terms = (f64::NAN, 0.0);
        for &(x, tx, big_t, n) in &h.rows {
            if x != x_terms.0 {
                x_terms = (x, ln_gamma(r + x) - ln_r + r_ln_alpha + ab + ln_gamma(b + x) - ln_gamma(a + b + x));
            }
            let a3 = -(r + x) * (alpha + big_t).ln();
            let ll = if x > 0.0 {
                let a4 = ln_a - (b + x - 1.0).ln() - (r + x) * (alpha + tx).ln();
                x_terms.1 + log_add_exp(a3, a4)
            } else {
                x_terms.1 + a3
            };
            total += n * ll;
        }
        -total / h.customers.max(1.0)
    }

    pub fn fit(data: &[Summary]) -> Result<BgNbd, String> {
        if data.is_empty() {
            return Err("no customers to fit".into());
        }
        let h = Histories::new(data);
        let p = minimise(|p| BgNbd { r: p[0], alpha: p[1], a: p[2], b: p[3] }.grouped_nll(&h), &[1.0, 1.0, 1.0, 1.0])?;
        Ok(BgNbd { r: p[0], alpha: p[1], a: p[2], b: p[3] })
    }

    /// The expected number of purchases in the next `t` weeks of a customer
    /// with this history (lifetimes' `conditional_expected_number_of_purchases_up_to_time`).
    pub fn expected_purchases(&self, s: &Summary, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let (x, tx, big_t) = (s.frequency, s.recency, s.age);
        let hyp_a = r + x;
        let hyp_b = b + x;
        let hyp_c = a + b + x - 1.0;
        let z = t / (alpha + big_t + t);
        let ln_hyp = hyp2f1(hyp_a, hyp_b, hyp_c, z).ln();
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - (ln_hyp + (r + x) * ((alpha + big_t) / (alpha + t + big_t)).ln()).exp();
        let numerator = first * second;
        let denominator = 1.0 + if x > 0.0 { (a / (b + x - 1.0)) * ((alpha + big_t) / (alpha + tx)).powf(r + x) } else { 0.0 };
        (numerator / denominator).max(0.0)
    }
}

/// The repeat customers' (x, m, ln m), sorted by x, for the Gamma-Gamma
/// likelihood (its log-gamma terms depend on x alone).
fn repeat_values(data: &[Summary]) -> Vec<(f64, f64, f64)> {
    let mut v: Vec<(f64, f64, f64)> =
        data.iter().filter(|s| s.frequency > 0.0 && s.monetary > 0.0).map(|s| (s.frequency, s.monetary, s.monetary.ln())).collect();
    // Sorted fully, so that the likelihood's sum, and so the fit, does not
    // depend on the order the query returned the customers in.
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    v
}

impl GammaGamma {
    /// The mean negative log-likelihood of the repeat customers' values.
    pub fn neg_log_likelihood(&self, data: &[Summary]) -> f64 {
        self.sorted_nll(&repeat_values(data))
    }

    fn sorted_nll(&self, values: &[(f64, f64, f64)]) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let (ln_q, q_ln_v) = (ln_gamma(q), q * v.ln());
        let mut total = 0.0;
        let mut x_terms = (f64::NAN, 0.0);
        for &(x, m, ln_m) in values {
            let px = p * x;
            if x != x_terms.0 {
                x_terms = (x, ln_gamma(px + q) - ln_gamma(px) - ln_q + q_ln_v + px * x.ln());
            }
            total += x_terms.1 + (px - 1.0) * ln_m - (px + q) * (x * m + v).ln();
        }
        -total / values.len().max(1) as f64
    }

    pub fn fit(data: &[Summary]) -> Result<GammaGamma, String> {
        let values = repeat_values(data);
        if values.is_empty() {
            return Err("no repeat customers to fit purchase values on".into());
        }
        let p = minimise(|p| GammaGamma { p: p[0], q: p[1], v: p[2] }.sorted_nll(&values), &[1.0, 1.0, 1.0])?;
        Ok(GammaGamma { p: p[0], q: p[1], v: p[2] })
    }

    /// The expected value of a customer's future purchases (lifetimes'
    /// `conditional_expected_average_profit`): shrunk from the customer's
    /// own mean towards the population's, more for few purchases.
    pub fn expected_value(&self, s: &Summary) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let population = v * p / (q - 1.0);
        if s.frequency <= 0.0 || s.monetary <= 0.0 {
            return population;
        }
        let x = s.frequency;
        let w = (q - 1.0) / (p * x + q - 1.0);
        w * population + (1.0 - w) * s.monetary
    }
}

/// Gauss's hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1, by its
/// series.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    for k in 0..100_000 {
        let k = k as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

/// Both models, fitted on one population.
#[derive(Debug, Clone, Copy)]
pub struct Clv {
    pub purchases: BgNbd,
    pub value: GammaGamma,
}

impl Clv {
    /// Fits both models, each on a thread of its own (they are independent).
    pub fn fit(data: &[Summary]) -> Result<Clv, String> {
        let (purchases, value) = std::thread::scope(|s| {
            let value = s.spawn(|| GammaGamma::fit(data));
            let purchases = BgNbd::fit(data);
            (purchases, value.join().unwrap_or_else(|_| Err("the purchase value fit panicked".into())))
        });
        Ok(Clv { purchases: purchases?, value: value? })
    }

    /// The expected revenue of a customer over the next `weeks` weeks
    /// (undiscounted).
    pub fn predict(&self, s: &Summary, weeks: f64) -> f64 {
        self.purchases.expected_purchases(s, weeks) * self.value.expected_value(s)
    }
}

/// The customers a lifetime value query returned, one entry per customer
/// in each vector: what the models read, the revenue so far, and the
/// values of the columns the sections group them by. Read as typed columns
/// (`float8`, `text`), not as JSON rows: a busy week has 200,000 of them.
#[derive(Debug, Default)]
pub struct Customers {
    pub summaries: Vec<Summary>,
    pub historical: Vec<f64>,
    /// Column (a model's `by`) → each customer's value (`-` for NULL).
    pub keys: HashMap<String, Vec<String>>,
}

/// The models fitted on a query's customers, once however many sections
/// group them, and their predictions by horizon.
pub struct Fitted {
    clv: Option<Clv>,
    predictions: std::sync::Mutex<Vec<(f64, std::sync::Arc<Vec<f64>>)>>,
}

impl Fitted {
    fn predictions(&self, clv: &Clv, data: &[Summary], weeks: f64) -> std::sync::Arc<Vec<f64>> {
        let mut cache = self.predictions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = cache.iter().find(|(w, _)| *w == weeks) {
            return p.clone();
        }
        // The expected purchases depend on the history (x, t_x, T) alone,
        // and their series is the cost: computed once per distinct history
        // (far fewer than customers: weeks and counts repeat), in parallel.
        let key = |s: &Summary| [s.frequency.to_bits(), s.recency.to_bits(), s.age.to_bits()];
        let mut histories: Vec<[u64; 3]> = data.iter().map(key).collect();
        histories.sort_unstable();
        histories.dedup();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = histories.len().div_ceil(threads).max(1);
        let mut purchases = vec![0.0; histories.len()];
        std::thread::scope(|scope| {
            for (hs, out) in histories.chunks(chunk).zip(purchases.chunks_mut(chunk)) {
                scope.spawn(move || {
                    for (h, o) in hs.iter().zip(out) {
                        let s = Summary {
                            frequency: f64::from_bits(h[0]),
                            recency: f64::from_bits(h[1]),
                            age: f64::from_bits(h[2]),
                            monetary: 0.0,
                        };
                        *o = clv.purchases.expected_purchases(&s, weeks);
                    }
                });
            }
        });
        let out: Vec<f64> = data
            .iter()
            .map(|s| {
                // (Always found: the histories are these customers'.)
                let i = histories.binary_search(&key(s)).unwrap_or_default();
                purchases[i] * clv.value.expected_value(s)
            })
            .collect();
        let out = std::sync::Arc::new(out);
        cache.push((weeks, out.clone()));
        out
    }
}

/// Fits the models on every customer (nothing to fit without customers).
pub fn fit(customers: &Customers) -> Result<Fitted, String> {
    let data = &customers.summaries;
    let clv = if data.is_empty() { None } else { Some(Clv::fit(data)?) };
    Ok(Fitted { clv, predictions: Default::default() })
}

/// The rows a section draws: per value of `model.by`, the customers, their
/// mean revenue so far, their mean and total predicted value.
pub fn summarize(customers: &Customers, fitted: &Fitted, model: &super::def::Model) -> Result<Vec<super::Row>, String> {
    use serde_json::Value;
    let Some(clv) = &fitted.clv else {
        return Ok(Vec::new());
    };
    let keys = customers.keys.get(&model.by).ok_or_else(|| format!("the customers were not read with column `{}`", model.by))?;
    let predictions = fitted.predictions(clv, &customers.summaries, model.horizon_weeks.unwrap_or(52.0));
    // (historical sum, predictions) by group. Revenue so far is whole won,
    // summed exactly in any order; the predictions are summed sorted, so
    // that the totals do not depend on the rows' order either.
    let mut by_key: std::collections::BTreeMap<&str, (f64, Vec<f64>)> = std::collections::BTreeMap::new();
    for ((key, &historical), &predicted) in keys.iter().zip(&customers.historical).zip(predictions.iter()) {
        let g = by_key.entry(key).or_default();
        g.0 += historical;
        g.1.push(predicted);
    }
    // (key, customers, historical sum, predicted sum)
    let mut groups: Vec<(&str, u64, f64, f64)> = by_key
        .into_iter()
        .map(|(key, (historical, mut predicted))| {
            predicted.sort_by(f64::total_cmp);
            (key, predicted.len() as u64, historical, predicted.iter().sum())
        })
        .collect();
    let rank = |k: &str| model.order.iter().position(|o| o == k).unwrap_or(usize::MAX);
    // By the given order, then the largest predicted total first (ties by name).
    groups.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(b.3.total_cmp(&a.3)).then_with(|| a.0.cmp(b.0)));
    Ok(groups
        .into_iter()
        .map(|(key, n, hist, pred)| {
            let mut row = super::Row::new();
            row.insert(model.by.clone(), Value::from(key));
            row.insert("customers".into(), Value::from(n));
            row.insert("historical".into(), Value::from((hist / n as f64).round()));
            row.insert("predicted".into(), Value::from((pred / n as f64).round()));
            row.insert("predicted_total".into(), Value::from(pred.round()));
            row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypergeometric_series() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z
        let z: f64 = 0.5;
        assert!((hyp2f1(1.0, 1.0, 2.0, z) - (-(1.0 - z).ln() / z)).abs() < 1e-12);
    }

    fn cdnow(file: &str) -> Vec<Vec<f64>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lifetimes").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect()
    }

    #[track_caller]
    fn close(got: f64, published: f64) {
        assert!((got - published).abs() < 0.005, "{got} is not {published} to 2 decimals");
    }

    /// The fits reproduce the parameters `lifetimes` publishes for its
    /// CDNOW summaries, to 2 decimals.
    #[test]
    fn fits_reproduce_lifetimes_on_cdnow() {
        let data: Vec<Summary> = cdnow("cdnow_customers_summary.csv")
            .iter()
            .map(|r| Summary { frequency: r[1], recency: r[2], age: r[3], monetary: 0.0 })
            .collect();
        assert_eq!(data.len(), 2357);
        let m = BgNbd::fit(&data).unwrap();
        close(m.r, 0.2426);
        close(m.alpha, 4.4135);
        close(m.a, 0.7929);
        close(m.b, 2.4258);
        let returning: Vec<Summary> = cdnow("cdnow_customers_summary_with_transactions.csv")
            .iter()
            .filter(|r| r[1] > 0.0)
            .map(|r| Summary { frequency: r[1], recency: r[2], age: r[3], monetary: r[4] })
            .collect();
        assert_eq!(returning.len(), 946);
        let g = GammaGamma::fit(&returning).unwrap();
        close(g.p, 6.2488);
        close(g.q, 3.7446);
        close(g.v, 15.4477);
    }

    /// The same customers in another order (a query without ORDER BY, a
    /// different join) give the same fits and the same groups, in the
    /// same order: two groups of the same customers tie, and are ordered
    /// by name, not by which came first.
    #[test]
    fn the_rows_order_changes_nothing() {
        let rows = cdnow("cdnow_customers_summary_with_transactions.csv");
        let customers = |order: &[(usize, &str)]| Customers {
            summaries: order
                .iter()
                .map(|&(i, _)| Summary { frequency: rows[i][1], recency: rows[i][2], age: rows[i][3], monetary: rows[i][4] })
                .collect(),
            historical: order.iter().map(|&(i, _)| (rows[i][4] * (rows[i][1] + 1.0)).round()).collect(),
            keys: HashMap::from([("segment".to_string(), order.iter().map(|&(_, k)| k.to_string()).collect())]),
        };
        let xs: Vec<(usize, &str)> = (0..rows.len()).map(|i| (i, "x")).collect();
        let ys: Vec<(usize, &str)> = (0..rows.len()).map(|i| (i, "y")).collect();
        let x_first: Vec<_> = xs.iter().chain(&ys).copied().collect();
        let y_first: Vec<_> = ys.iter().chain(&xs).copied().collect();
        let mut reversed = x_first.clone();
        reversed.reverse();
        let model: crate::report::def::Model = serde_yaml::from_str("{ kind: clv, by: segment }").unwrap();
        let summarized = |order: &[(usize, &str)]| {
            let c = customers(order);
            let fitted = fit(&c).unwrap();
            let clv = fitted.clv.unwrap();
            ((clv.purchases, clv.value), summarize(&c, &fitted, &model).unwrap())
        };
        let first = summarized(&x_first);
        let groups: Vec<&str> = first.1.iter().map(|g| g["segment"].as_str().unwrap()).collect();
        assert_eq!(groups, ["x", "y"]);
        assert_eq!(first.1[0]["predicted_total"], first.1[1]["predicted_total"]);
        assert_eq!(summarized(&y_first), first);
        assert_eq!(summarized(&reversed), first);
    }

    #[test]
    fn predictions_computed_once_per_history_are_each_customers_own() {
        let rows = cdnow("cdnow_customers_summary_with_transactions.csv");
        let summaries: Vec<Summary> = rows.iter().map(|r| Summary { frequency: r[1], recency: r[2], age: r[3], monetary: r[4] }).collect();
        let customers = Customers { historical: vec![0.0; summaries.len()], summaries, keys: HashMap::new() };
        let fitted = fit(&customers).unwrap();
        let clv = fitted.clv.unwrap();
        let got = fitted.predictions(&clv, &customers.summaries, 39.0);
        let distinct: std::collections::HashSet<_> =
            customers.summaries.iter().map(|s| [s.frequency.to_bits(), s.recency.to_bits(), s.age.to_bits()]).collect();
        assert!(distinct.len() < customers.summaries.len(), "some customers share a history");
        for (s, p) in customers.summaries.iter().zip(got.iter()) {
            assert_eq!(p.to_bits(), clv.predict(s, 39.0).to_bits(), "{s:?}");
        }
    }

    #[test]
    fn more_history_more_expected_purchases() {
        let m = BgNbd { r: 0.2426, alpha: 4.4135, a: 0.7929, b: 2.4258 };
        let active = Summary { frequency: 5.0, recency: 30.0, age: 32.0, monetary: 20.0 };
        let gone = Summary { frequency: 5.0, recency: 5.0, age: 32.0, monetary: 20.0 };
        assert!(m.expected_purchases(&active, 52.0) > m.expected_purchases(&gone, 52.0));
        assert!(m.expected_purchases(&active, 52.0) > 0.0);
    }
}
