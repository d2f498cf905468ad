//! The catalog aggregate: one per tenant (its id is the tenant id), holding the tenant's
//! taxes and products. Saving is idempotent: the first save defines an item, a save that
//! changes it is an update, a save that changes nothing appends nothing — so each item's
//! history is the list of its real changes.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::payments::{CatalogEvent, Product, Tax, CATALOG};
use serde::{Deserialize, Serialize};

use super::values::{self, FULL_RATE_BP, MAX_AMOUNT};

/// A change asked of a catalog (already authorised for its tenant).
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogCommand {
    /// Define or change a tax.
    SaveTax {
        /// Its id.
        tax_id: String,
        /// Display name.
        name: String,
        /// Rate in basis points.
        rate_bp: u32,
        /// Whether prices include it.
        included: bool,
    },
    /// Define or change a product.
    SaveProduct {
        /// Its id.
        product_id: String,
        /// Display name.
        name: String,
        /// Unit price, minor units.
        unit_price: i64,
        /// ISO 4217 code.
        currency: String,
        /// Its tax, which must be defined.
        tax_id: Option<String>,
        /// Whether it may be sold.
        active: bool,
    },
}

/// Why a catalog change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// 422 `invalid_item_id`.
    #[error("ids are 1 to 64 letters, digits, '_' or '-'")]
    InvalidId,
    /// 422 `invalid_name`.
    #[error("a name is 1 to 120 characters without control characters")]
    InvalidName,
    /// 422 `invalid_rate`.
    #[error("a tax rate is 0 to 10000 basis points")]
    InvalidRate,
    /// 422 `invalid_price`.
    #[error("a unit price is 0 to 1000000000000 minor units")]
    InvalidPrice,
    /// 422 `invalid_currency`.
    #[error("a currency is an ISO 4217 code such as EUR")]
    InvalidCurrency,
    /// 422 `unknown_tax`.
    #[error("no tax with that id in this catalog")]
    UnknownTax,
}

/// A tenant's catalog (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Catalog {
    /// Taxes by id.
    taxes: BTreeMap<String, Tax>,
    /// Products by id.
    products: BTreeMap<String, Product>,
}

impl Catalog {
    /// A product by id.
    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.get(id)
    }

    /// A tax by id.
    pub fn tax(&self, id: &str) -> Option<&Tax> {
        self.taxes.get(id)
    }

    fn decide(&self, command: CatalogCommand) -> Result<Option<CatalogEvent>, CatalogError> {
        match command {
            CatalogCommand::SaveTax {
                tax_id,
                name,
                rate_bp,
                included,
            } => {
                let tax = Tax {
                    tax_id: values::item_id(&tax_id).ok_or(CatalogError::InvalidId)?,
                    name: values::name(&name).ok_or(CatalogError::InvalidName)?,
                    rate_bp: (rate_bp <= FULL_RATE_BP)
                        .then_some(rate_bp)
                        .ok_or(CatalogError::InvalidRate)?,
                    included,
                };
                Ok(match self.taxes.get(&tax.tax_id) {
                    None => Some(CatalogEvent::TaxDefined(tax)),
                    Some(old) if *old == tax => None,
                    Some(_) => Some(CatalogEvent::TaxUpdated(tax)),
                })
            }
            CatalogCommand::SaveProduct {
                product_id,
                name,
                unit_price,
                currency,
                tax_id,
                active,
            } => {
                if let Some(t) = &tax_id {
                    if !self.taxes.contains_key(t) {
                        return Err(CatalogError::UnknownTax);
                    }
                }
                let product = Product {
                    product_id: values::item_id(&product_id).ok_or(CatalogError::InvalidId)?,
                    name: values::name(&name).ok_or(CatalogError::InvalidName)?,
                    unit_price: (0..=MAX_AMOUNT)
                        .contains(&unit_price)
                        .then_some(unit_price)
                        .ok_or(CatalogError::InvalidPrice)?,
                    currency: values::currency(&currency).ok_or(CatalogError::InvalidCurrency)?,
                    tax_id,
                    active,
                };
                Ok(match self.products.get(&product.product_id) {
                    None => Some(CatalogEvent::ProductDefined(product)),
                    Some(old) if *old == product => None,
                    Some(_) => Some(CatalogEvent::ProductUpdated(product)),
                })
            }
        }
    }
}

impl Aggregate for Catalog {
    const TYPE: &'static str = CATALOG;
    type Command = CatalogCommand;
    type Event = CatalogEvent;
    type Error = CatalogError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CatalogCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CatalogError> {
        if let Some(event) = self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CatalogEvent) {
        match event {
            CatalogEvent::TaxDefined(t) | CatalogEvent::TaxUpdated(t) => {
                self.taxes.insert(t.tax_id.clone(), t);
            }
            CatalogEvent::ProductDefined(p) | CatalogEvent::ProductUpdated(p) => {
                self.products.insert(p.product_id.clone(), p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn vat() -> Tax {
        Tax {
            tax_id: "vat".into(),
            name: "VAT 20%".into(),
            rate_bp: 2_000,
            included: true,
        }
    }

    fn save_vat(rate_bp: u32) -> CatalogCommand {
        CatalogCommand::SaveTax {
            tax_id: "vat".into(),
            name: " VAT 20% ".into(),
            rate_bp,
            included: true,
        }
    }

    fn coffee() -> Product {
        Product {
            product_id: "coffee".into(),
            name: "Coffee".into(),
            unit_price: 350,
            currency: "EUR".into(),
            tax_id: Some("vat".into()),
            active: true,
        }
    }

    fn save_coffee(unit_price: i64, tax_id: Option<&str>) -> CatalogCommand {
        CatalogCommand::SaveProduct {
            product_id: "coffee".into(),
            name: "Coffee".into(),
            unit_price,
            currency: "EUR".into(),
            tax_id: tax_id.map(str::to_owned),
            active: true,
        }
    }

    fn framework() -> TestFramework<Catalog> {
        TestFramework::with(())
    }

    #[test]
    fn save_tax_first_time_defines_it() {
        framework()
            .given_no_previous_events()
            .when(save_vat(2_000))
            .then_expect_events(vec![CatalogEvent::TaxDefined(vat())]);
    }

    #[test]
    fn save_tax_with_a_new_rate_updates_it() {
        framework()
            .given(vec![CatalogEvent::TaxDefined(vat())])
            .when(save_vat(550))
            .then_expect_events(vec![CatalogEvent::TaxUpdated(Tax {
                rate_bp: 550,
                ..vat()
            })]);
    }

    #[test]
    fn save_tax_unchanged_appends_nothing() {
        framework()
            .given(vec![CatalogEvent::TaxDefined(vat())])
            .when(save_vat(2_000))
            .then_expect_events(vec![]);
    }

    #[test]
    fn save_tax_above_100_percent_is_refused() {
        framework()
            .given_no_previous_events()
            .when(save_vat(10_001))
            .then_expect_error(CatalogError::InvalidRate);
    }

    #[test]
    fn save_product_with_its_tax_defines_it() {
        framework()
            .given(vec![CatalogEvent::TaxDefined(vat())])
            .when(save_coffee(350, Some("vat")))
            .then_expect_events(vec![CatalogEvent::ProductDefined(coffee())]);
    }

    #[test]
    fn save_product_with_an_unknown_tax_is_refused() {
        framework()
            .given_no_previous_events()
            .when(save_coffee(350, Some("vat")))
            .then_expect_error(CatalogError::UnknownTax);
    }

    #[test]
    fn save_product_with_a_new_price_updates_it() {
        framework()
            .given(vec![
                CatalogEvent::TaxDefined(vat()),
                CatalogEvent::ProductDefined(coffee()),
            ])
            .when(save_coffee(400, Some("vat")))
            .then_expect_events(vec![CatalogEvent::ProductUpdated(Product {
                unit_price: 400,
                ..coffee()
            })]);
    }

    #[test]
    fn save_product_with_a_negative_price_is_refused() {
        framework()
            .given_no_previous_events()
            .when(save_coffee(-1, None))
            .then_expect_error(CatalogError::InvalidPrice);
    }

    #[test]
    fn save_product_with_a_bad_currency_is_refused() {
        framework()
            .given_no_previous_events()
            .when(CatalogCommand::SaveProduct {
                product_id: "coffee".into(),
                name: "Coffee".into(),
                unit_price: 1,
                currency: "eur".into(),
                tax_id: None,
                active: true,
            })
            .then_expect_error(CatalogError::InvalidCurrency);
    }

    #[test]
    fn save_product_with_a_bad_id_or_name_is_refused() {
        framework()
            .given_no_previous_events()
            .when(CatalogCommand::SaveProduct {
                product_id: "a/b".into(),
                name: "Coffee".into(),
                unit_price: 1,
                currency: "EUR".into(),
                tax_id: None,
                active: true,
            })
            .then_expect_error(CatalogError::InvalidId);
        framework()
            .given_no_previous_events()
            .when(CatalogCommand::SaveProduct {
                product_id: "ok".into(),
                name: "\u{7}".into(),
                unit_price: 1,
                currency: "EUR".into(),
                tax_id: None,
                active: true,
            })
            .then_expect_error(CatalogError::InvalidName);
    }
}
