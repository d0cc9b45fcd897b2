//! The TPC-C stored procedures' wire forms (`proto/tpcc.proto`): this crate's inputs,
//! outcomes and check results, both ways (the server decodes requests and encodes
//! answers; [`crate::client::TpccClient`] does the reverse).
//!
//! Decoding refuses what a terminal could not have sent (out-of-domain numbers, a
//! missing customer selection) with a message for INVALID_ARGUMENT.

use crate::check::{CheckResult, Verdict, NAMES};
use crate::random::NuRandConstants;
use crate::transactions::{
    CustomerSel, DeliveryInput, Input, Locking, Mode, NewOrderInput, OrderLineInput,
    OrderStatusInput, Outcome, PaymentInput, StockLevelInput,
};
use common::proto::compute as cpb;
use common::proto::tpcc as pb;
use common::txn::Isolation;
use pb::procedure_response::Outcome as PbOutcome;

/// A stored-procedure call: the input, its timestamp (µs since the Unix epoch) and,
/// for Payment, the HISTORY row's (origin, seq).
#[derive(Clone, Debug)]
pub struct Call {
    pub input: Input,
    pub now_us: u64,
    pub history_key: (u32, u64),
    pub mode: Mode,
}

pub fn mode_to_pb(m: &Mode) -> Option<pb::Mode> {
    Some(pb::Mode {
        isolation: match m.isolation {
            None => cpb::Isolation::Default,
            Some(Isolation::Snapshot) => cpb::Isolation::Snapshot,
            Some(Isolation::ReadCommitted) => cpb::Isolation::ReadCommitted,
        } as i32,
        plain_reads: m.locking == Locking::Plain,
    })
}

pub fn mode_from_pb(m: Option<pb::Mode>) -> Result<Mode, String> {
    let Some(m) = m else {
        return Ok(Mode::default());
    };
    let isolation = match cpb::Isolation::try_from(m.isolation) {
        Ok(cpb::Isolation::Default) => None,
        Ok(cpb::Isolation::Snapshot) => Some(Isolation::Snapshot),
        Ok(cpb::Isolation::ReadCommitted) => Some(Isolation::ReadCommitted),
        Err(e) => return Err(format!("mode.isolation: {e}")),
    };
    Ok(Mode {
        isolation,
        locking: if m.plain_reads {
            Locking::Plain
        } else {
            Locking::ForUpdate
        },
    })
}

fn customer_to_pb(c: &CustomerSel) -> pb::Customer {
    pb::Customer {
        by: Some(match c {
            CustomerSel::Id(id) => pb::customer::By::Id(*id),
            CustomerSel::LastName(n) => pb::customer::By::LastName(n.clone()),
        }),
    }
}

fn customer_from_pb(c: Option<pb::Customer>) -> Result<CustomerSel, String> {
    match c.and_then(|c| c.by) {
        Some(pb::customer::By::Id(id)) => Ok(CustomerSel::Id(id)),
        Some(pb::customer::By::LastName(n)) => Ok(CustomerSel::LastName(n)),
        None => Err("customer: neither id nor last_name is set".into()),
    }
}

/// The request of each procedure, client side.
pub enum Request {
    NewOrder(pb::NewOrderRequest),
    Payment(pb::PaymentRequest),
    OrderStatus(pb::OrderStatusRequest),
    Delivery(pb::DeliveryRequest),
    StockLevel(pb::StockLevelRequest),
}

pub fn request_of(call: &Call) -> Request {
    let now_us = call.now_us;
    let mode = mode_to_pb(&call.mode);
    match &call.input {
        Input::NewOrder(i) => Request::NewOrder(pb::NewOrderRequest {
            warehouse: i.w,
            district: i.d,
            customer: i.c,
            lines: i
                .lines
                .iter()
                .map(|l| pb::OrderLine {
                    item_id: l.i_id,
                    supply_warehouse: l.supply_w_id,
                    quantity: l.quantity,
                })
                .collect(),
            now_us,
            mode,
        }),
        Input::Payment(i) => Request::Payment(pb::PaymentRequest {
            warehouse: i.w,
            district: i.d,
            customer_warehouse: i.c_w,
            customer_district: i.c_d,
            customer: Some(customer_to_pb(&i.customer)),
            amount: i.amount,
            now_us,
            history_origin: call.history_key.0,
            history_seq: call.history_key.1,
            mode,
        }),
        Input::OrderStatus(i) => Request::OrderStatus(pb::OrderStatusRequest {
            warehouse: i.w,
            district: i.d,
            customer: Some(customer_to_pb(&i.customer)),
            mode,
        }),
        Input::Delivery(i) => Request::Delivery(pb::DeliveryRequest {
            warehouse: i.w,
            carrier: i.carrier,
            now_us,
            mode,
        }),
        Input::StockLevel(i) => Request::StockLevel(pb::StockLevelRequest {
            warehouse: i.w,
            district: i.d,
            threshold: i.threshold,
            mode,
        }),
    }
}

fn now_or_clock(now_us: u64) -> u64 {
    if now_us != 0 {
        return now_us;
    }
    crate::load::now_micros()
}

pub fn new_order_call(r: pb::NewOrderRequest) -> Result<Call, String> {
    let input = Input::NewOrder(NewOrderInput {
        w: r.warehouse,
        d: r.district,
        c: r.customer,
        rollback: false,
        lines: r
            .lines
            .into_iter()
            .map(|l| OrderLineInput {
                i_id: l.item_id,
                supply_w_id: l.supply_warehouse,
                quantity: l.quantity,
            })
            .collect(),
    });
    input.validate()?;
    Ok(Call {
        input,
        now_us: now_or_clock(r.now_us),
        history_key: (0, 0),
        mode: mode_from_pb(r.mode)?,
    })
}

pub fn payment_call(r: pb::PaymentRequest) -> Result<Call, String> {
    if r.history_origin == 0 {
        return Err("history_origin must be at least 1 (0 is the loader's)".into());
    }
    let input = Input::Payment(PaymentInput {
        w: r.warehouse,
        d: r.district,
        c_w: r.customer_warehouse,
        c_d: r.customer_district,
        customer: customer_from_pb(r.customer)?,
        amount: r.amount,
    });
    input.validate()?;
    Ok(Call {
        input,
        now_us: now_or_clock(r.now_us),
        history_key: (r.history_origin, r.history_seq),
        mode: mode_from_pb(r.mode)?,
    })
}

pub fn order_status_call(r: pb::OrderStatusRequest) -> Result<Call, String> {
    let input = Input::OrderStatus(OrderStatusInput {
        w: r.warehouse,
        d: r.district,
        customer: customer_from_pb(r.customer)?,
    });
    input.validate()?;
    Ok(Call {
        input,
        now_us: now_or_clock(0),
        history_key: (0, 0),
        mode: mode_from_pb(r.mode)?,
    })
}

pub fn delivery_call(r: pb::DeliveryRequest) -> Result<Call, String> {
    let input = Input::Delivery(DeliveryInput {
        w: r.warehouse,
        carrier: r.carrier,
    });
    input.validate()?;
    Ok(Call {
        input,
        now_us: now_or_clock(r.now_us),
        history_key: (0, 0),
        mode: mode_from_pb(r.mode)?,
    })
}

pub fn stock_level_call(r: pb::StockLevelRequest) -> Result<Call, String> {
    let input = Input::StockLevel(StockLevelInput {
        w: r.warehouse,
        d: r.district,
        threshold: r.threshold,
    });
    input.validate()?;
    Ok(Call {
        input,
        now_us: now_or_clock(0),
        history_key: (0, 0),
        mode: mode_from_pb(r.mode)?,
    })
}

pub fn response_of(o: Outcome) -> pb::ProcedureResponse {
    let mut r = pb::ProcedureResponse {
        outcome: PbOutcome::Committed as i32,
        ..Default::default()
    };
    match o {
        Outcome::Done => {}
        Outcome::RolledBack => r.outcome = PbOutcome::RolledBack as i32,
        Outcome::Ordered { o_id } => r.order_id = o_id,
        Outcome::Delivered { skipped } => r.skipped_districts = skipped,
        Outcome::LowStock { low } => r.low_stock = low,
    }
    r
}

/// The outcome an answer to `input` carries.
pub fn outcome_of(input: &Input, r: &pb::ProcedureResponse) -> Result<Outcome, String> {
    match PbOutcome::try_from(r.outcome) {
        Ok(PbOutcome::RolledBack) => Ok(Outcome::RolledBack),
        Ok(PbOutcome::Committed) => Ok(match input {
            Input::NewOrder(_) => Outcome::Ordered { o_id: r.order_id },
            Input::Delivery(_) => Outcome::Delivered {
                skipped: r.skipped_districts,
            },
            Input::StockLevel(_) => Outcome::LowStock { low: r.low_stock },
            _ => Outcome::Done,
        }),
        _ => Err(format!("unknown outcome {}", r.outcome)),
    }
}

pub fn nurand_to_pb(c: &NuRandConstants) -> pb::NuRand {
    pb::NuRand {
        c_last: c.c_last,
        c_id: c.c_id,
        ol_i_id: c.ol_i_id,
    }
}

pub fn nurand_from_pb(c: Option<pb::NuRand>) -> Result<NuRandConstants, String> {
    let c = c.ok_or("c_load is missing")?;
    if c.c_last > 255 || c.c_id > 1023 || c.ol_i_id > 8191 {
        return Err(format!(
            "c_load ({}, {}, {}) is out of range (A = 255, 1023, 8191)",
            c.c_last, c.c_id, c.ol_i_id
        ));
    }
    Ok(NuRandConstants {
        c_last: c.c_last,
        c_id: c.c_id,
        ol_i_id: c.ol_i_id,
    })
}

pub fn check_to_pb(c: &CheckResult) -> pb::CheckResult {
    use pb::check_result::Verdict as V;
    let (verdict, detail) = match &c.verdict {
        Verdict::Passed => (V::Passed, String::new()),
        Verdict::Failed(d) => (V::Failed, d.clone()),
        Verdict::NotApplicable(d) => (V::NotApplicable, d.clone()),
    };
    pb::CheckResult {
        id: c.id,
        name: c.name.to_string(),
        verdict: verdict as i32,
        detail,
    }
}

pub fn check_from_pb(c: &pb::CheckResult) -> Result<CheckResult, String> {
    use pb::check_result::Verdict as V;
    let name =
        c.id.checked_sub(1)
            .and_then(|i| NAMES.get(i as usize))
            .ok_or_else(|| format!("unknown consistency condition {}", c.id))?;
    let verdict = match V::try_from(c.verdict) {
        Ok(V::Passed) => Verdict::Passed,
        Ok(V::Failed) => Verdict::Failed(c.detail.clone()),
        Ok(V::NotApplicable) => Verdict::NotApplicable(c.detail.clone()),
        _ => return Err(format!("condition {}: unknown verdict {}", c.id, c.verdict)),
    };
    Ok(CheckResult {
        id: c.id,
        name,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip() {
        let inputs = [
            Input::NewOrder(NewOrderInput {
                w: 2,
                d: 3,
                c: 17,
                rollback: false,
                lines: (1..=5)
                    .map(|i| OrderLineInput {
                        i_id: i * 7,
                        supply_w_id: 1 + i % 2,
                        quantity: i,
                    })
                    .collect(),
            }),
            Input::Payment(PaymentInput {
                w: 1,
                d: 2,
                c_w: 2,
                c_d: 9,
                customer: CustomerSel::LastName("BARBARBAR".into()),
                amount: 1234,
            }),
            Input::OrderStatus(OrderStatusInput {
                w: 1,
                d: 10,
                customer: CustomerSel::Id(3000),
            }),
            Input::Delivery(DeliveryInput { w: 4, carrier: 10 }),
            Input::StockLevel(StockLevelInput {
                w: 1,
                d: 1,
                threshold: 15,
            }),
        ];
        let modes = [
            Mode::default(),
            Mode {
                isolation: Some(Isolation::ReadCommitted),
                locking: Locking::ForUpdate,
            },
            Mode {
                isolation: Some(Isolation::Snapshot),
                locking: Locking::Plain,
            },
        ];
        for (i, input) in inputs.into_iter().enumerate() {
            let mode = modes[i % modes.len()];
            let call = Call {
                input: input.clone(),
                now_us: 99,
                history_key: (5, 6),
                mode,
            };
            let back = match request_of(&call) {
                Request::NewOrder(r) => new_order_call(r),
                Request::Payment(r) => payment_call(r),
                Request::OrderStatus(r) => order_status_call(r),
                Request::Delivery(r) => delivery_call(r),
                Request::StockLevel(r) => stock_level_call(r),
            }
            .unwrap();
            assert_eq!(format!("{:?}", back.input), format!("{input:?}"));
            assert_eq!(back.mode, mode);
        }
    }

    #[test]
    fn out_of_domain_inputs_are_refused() {
        let bad = pb::NewOrderRequest {
            warehouse: 1,
            district: 11,
            customer: 1,
            lines: vec![],
            now_us: 0,
            mode: None,
        };
        assert!(new_order_call(bad).unwrap_err().contains("district 11"));
        let no_customer = pb::PaymentRequest {
            warehouse: 1,
            district: 1,
            customer_warehouse: 1,
            customer_district: 1,
            customer: None,
            amount: 500,
            now_us: 0,
            history_origin: 1,
            history_seq: 1,
            mode: Some(pb::Mode {
                isolation: 77,
                plain_reads: false,
            }),
        };
        assert!(payment_call(no_customer.clone())
            .unwrap_err()
            .contains("customer"));
        let bad_c = nurand_from_pb(Some(pb::NuRand {
            c_last: 300,
            c_id: 1,
            ol_i_id: 1,
        }));
        assert!(bad_c.is_err());
    }

    #[test]
    fn checks_round_trip() {
        let c = CheckResult {
            id: 3,
            name: NAMES[2],
            verdict: Verdict::Failed("row x".into()),
        };
        let back = check_from_pb(&check_to_pb(&c)).unwrap();
        assert_eq!((back.id, back.name, back.verdict), (3, NAMES[2], c.verdict));
        let unknown = pb::CheckResult {
            id: 13,
            ..Default::default()
        };
        assert!(check_from_pb(&unknown).is_err());
    }
}
