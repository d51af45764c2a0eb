//! Range checks of configuration values, with messages that name the key,
//! the value and the allowed interval.

/// One end of an allowed interval.
#[derive(Clone, Copy)]
pub enum Bound {
    Open(f64),
    Closed(f64),
    Unbounded,
}

/// Pushes a problem when `v` is not finite or lies outside (`lo`, `hi`).
pub fn check_range(problems: &mut Vec<String>, key: &str, v: f64, lo: Bound, hi: Bound) {
    use Bound::{Closed, Open, Unbounded};
    let above = match lo {
        Open(l) => v > l,
        Closed(l) => v >= l,
        Unbounded => true,
    };
    let below = match hi {
        Open(h) => v < h,
        Closed(h) => v <= h,
        Unbounded => true,
    };
    if !(v.is_finite() && above && below) {
        let lo = match lo {
            Open(l) => format!("({l}"),
            Closed(l) => format!("[{l}"),
            Unbounded => "(-inf".into(),
        };
        let hi = match hi {
            Open(h) => format!("{h})"),
            Closed(h) => format!("{h}]"),
            Unbounded => "inf)".into(),
        };
        problems.push(format!(
            "{key} = {v}: expected a finite value in {lo}, {hi}"
        ));
    }
}
