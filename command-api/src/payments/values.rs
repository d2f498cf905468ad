//! Value rules of payments: currency codes, names, amounts and the tax arithmetic.

use events::payments::{PaymentLine, Product, Tax};

/// The largest amount (minor units) of a price or a payment: far above any real payment,
/// far below where `i64` arithmetic could overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// The most units of one product in a payment.
pub const MAX_QUANTITY: u32 = 10_000;
/// The most lines of a payment.
pub const MAX_LINES: usize = 100;
/// Basis points in 100 %.
pub const FULL_RATE_BP: u32 = 10_000;

/// An ISO 4217 code: three uppercase ASCII letters.
pub fn currency(raw: &str) -> Option<String> {
    let ok = raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase());
    ok.then(|| raw.to_owned())
}

/// A display name: trimmed, 1–120 characters, no control characters.
pub fn name(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let count = trimmed.chars().count();
    let ok = (1..=120).contains(&count) && !trimmed.chars().any(char::is_control);
    ok.then(|| trimmed.to_owned())
}

/// An id chosen by the client (product, tax): 1–64 of `[A-Za-z0-9_-]`.
pub fn item_id(raw: &str) -> Option<String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| raw.to_owned())
}

/// `value × numerator / denominator`, rounded half away from zero, in 128-bit arithmetic.
pub fn mul_div_round(value: i64, numerator: i64, denominator: i64) -> i64 {
    if denominator == 0 {
        return 0;
    }
    let n = value as i128 * numerator as i128;
    let d = denominator as i128;
    let q = (2 * n + d.signum() * n.signum() * d.abs()) / (2 * d);
    q as i64
}

/// The amounts of `quantity` × `product` under `tax`: a price that includes its tax is split
/// into net and tax (the tax is what the price holds beyond the net); a tax added on top is
/// rounded once per line. `None` if the line exceeds [`MAX_AMOUNT`].
pub fn line(product: &Product, tax: Option<&Tax>, quantity: u32) -> Option<PaymentLine> {
    let base = product.unit_price.checked_mul(quantity as i64)?;
    if base > MAX_AMOUNT {
        return None;
    }
    let (net, tax_amount) = match tax {
        None => (base, 0),
        Some(t) if t.included => {
            let net = mul_div_round(base, FULL_RATE_BP as i64, (FULL_RATE_BP + t.rate_bp) as i64);
            (net, base - net)
        }
        Some(t) => (
            base,
            mul_div_round(base, t.rate_bp as i64, FULL_RATE_BP as i64),
        ),
    };
    Some(PaymentLine {
        product_id: product.product_id.clone(),
        name: product.name.clone(),
        quantity,
        unit_price: product.unit_price,
        tax: tax.cloned(),
        net,
        tax_amount,
        gross: net + tax_amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(price: i64) -> Product {
        Product {
            product_id: "p".into(),
            name: "P".into(),
            unit_price: price,
            currency: "EUR".into(),
            tax_id: Some("vat".into()),
            active: true,
        }
    }

    fn vat(included: bool) -> Tax {
        Tax {
            tax_id: "vat".into(),
            name: "VAT".into(),
            rate_bp: 2_000,
            included,
        }
    }

    #[test]
    fn an_included_tax_is_split_out_of_the_price() {
        // 12.00 incl. 20 % = 10.00 + 2.00
        let l = line(&product(1_200), Some(&vat(true)), 1).expect("line");
        assert_eq!((l.net, l.tax_amount, l.gross), (1_000, 200, 1_200));
        // 3 × 9.99 incl. 20 %: 29.97 = 24.98 + 4.99 (rounded once per line)
        let l = line(&product(999), Some(&vat(true)), 3).expect("line");
        assert_eq!((l.net, l.tax_amount, l.gross), (2_498, 499, 2_997));
    }

    #[test]
    fn an_added_tax_is_rounded_once_per_line() {
        // 3 × 3.33 + 20 % = 9.99 + 2.00 (1.998 rounds up)
        let l = line(&product(333), Some(&vat(false)), 3).expect("line");
        assert_eq!((l.net, l.tax_amount, l.gross), (999, 200, 1_199));
    }

    #[test]
    fn no_tax_means_net_is_gross() {
        let l = line(&product(500), None, 2).expect("line");
        assert_eq!((l.net, l.tax_amount, l.gross), (1_000, 0, 1_000));
    }

    #[test]
    fn a_line_above_the_limit_is_refused() {
        assert!(line(&product(MAX_AMOUNT), None, 2).is_none());
        assert!(line(&product(i64::MAX), None, 2).is_none());
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(mul_div_round(5, 1, 2), 3);
        assert_eq!(mul_div_round(4, 1, 2), 2);
        assert_eq!(mul_div_round(-5, 1, 2), -3);
        assert_eq!(mul_div_round(7, 1, 0), 0);
    }

    #[test]
    fn currencies_are_three_uppercase_letters() {
        assert_eq!(currency("EUR").as_deref(), Some("EUR"));
        for bad in ["eur", "EURO", "E1R", "", "€UR"] {
            assert!(currency(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ids_and_names_are_bounded() {
        assert!(item_id("vat-20_a").is_some());
        assert!(item_id("a b").is_none());
        assert!(item_id(&"x".repeat(65)).is_none());
        assert_eq!(name("  Coffee ").as_deref(), Some("Coffee"));
        assert!(name(" ").is_none());
        assert!(name("a\u{0}b").is_none());
    }
}
