//! The key state machine, driven with injected time.

use super::*;

/// 2026-11-21T12:00:00Z.
const NOON: u64 = 1_795_262_400_000;

fn usd(x: f64) -> Money {
    Money::from_usd(x).unwrap()
}

fn virtual_key(settings: KeySettings) -> KeyState {
    let mut s = KeyState::default();
    let record = KeyRecord {
        id: "k1".into(),
        settings,
        secret_hash: "hash-1".into(),
        secret_hint: "sk-gw-k1_…abcd".into(),
        revoked: false,
        created_ms: NOON,
        updated_ms: NOON,
    };
    assert!(matches!(
        s.apply(Command::Create { record }, NOON),
        Reply::Key(_)
    ));
    s
}

fn auth() -> Auth {
    Auth::Virtual {
        secret_hash: "hash-1".into(),
    }
}

fn admit_with(s: &mut KeyState, now: u64, reserve: Money, tokens: u64) -> Result<u64, Box<Denial>> {
    let a = Admit {
        auth: auth(),
        model: "gpt".into(),
        reserve,
        tokens,
        lease: None,
        settle: None,
    };
    match s.apply(Command::Admit(a), now) {
        Reply::Admitted { reservation, .. } => Ok(reservation),
        Reply::Denied(d) => Err(d),
        other => panic!("{other:?}"),
    }
}

fn admit(s: &mut KeyState, now: u64) -> Result<u64, Box<Denial>> {
    admit_with(s, now, Money::ZERO, 0)
}

fn charge(source: Source, model: &str, cost: Money, input: u64, output: u64) -> Charge {
    Charge {
        source,
        admitted_ms: NOON,
        model: model.into(),
        requests: 1,
        errors: 0,
        input_tokens: input,
        output_tokens: output,
        cached_tokens: 0,
        cache_hits: 0,
        cost,
    }
}

/// Increasing batch numbers for [`settle`] (any increasing sequence will do).
fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Applies one batch from holder `h` with sequence `seq`.
fn sync(s: &mut KeyState, now: u64, seq: u64, charges: Vec<Charge>, done: Vec<LeaseDone>) -> Reply {
    s.apply(
        Command::Sync(Sync {
            holder: "h".into(),
            seq,
            charges,
            done,
            ask: None,
            answered: 0,
            in_flight: 0,
            held: vec![],
        }),
        now,
    )
}

/// Settles a reservation; whether it was still open (and so charged).
fn settle(s: &mut KeyState, reservation: u64, cost: Money, input: u64, output: u64) -> bool {
    let before = report(s, NOON).in_flight;
    let seq = next_seq();
    let c = charge(
        Source::Reservation { id: reservation },
        "gpt",
        cost,
        input,
        output,
    );
    sync(s, NOON, seq, vec![c], vec![]);
    report(s, NOON).in_flight < before
}

fn report(s: &mut KeyState, now: u64) -> UsageReport {
    match s.apply(Command::Usage { auth: Auth::Admin }, now) {
        Reply::Usage(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn limits(l: RateLimits) -> KeySettings {
    KeySettings {
        name: "t".into(),
        limits: l,
        ..KeySettings::default()
    }
}

fn budgets(b: Budgets) -> KeySettings {
    KeySettings {
        name: "t".into(),
        budgets: b,
        ..KeySettings::default()
    }
}

fn ask(requests: u64, money: Money, min_money: Money) -> LeaseAsk {
    LeaseAsk {
        auth: auth(),
        holder: "h".into(),
        requests,
        tokens: requests * 100,
        money,
        slots: 8,
        min_tokens: 100,
        min_money,
        ttl_ms: 10_000,
        hold_ms: 60_000,
        ask_id: 1,
    }
}

/// Asks for a lease with an empty batch.
fn lease(s: &mut KeyState, now: u64, a: LeaseAsk) -> Option<Grant> {
    match s.apply(
        Command::Sync(Sync {
            holder: "h".into(),
            seq: 0,
            charges: vec![],
            done: vec![],
            ask: Some(a),
            answered: 0,
            in_flight: 0,
            held: vec![],
        }),
        now,
    ) {
        Reply::Synced { grant, .. } => grant,
        other => panic!("{other:?}"),
    }
}

#[test]
fn static_keys_have_no_limits_and_are_counted() {
    let mut s = KeyState::default();
    for i in 0..5 {
        let a = Admit {
            auth: Auth::Static,
            model: "m".into(),
            reserve: usd(1000.0),
            tokens: 1 << 40,
            lease: None,
            settle: None,
        };
        assert!(matches!(
            s.apply(Command::Admit(a), NOON + i),
            Reply::Admitted { .. }
        ));
    }
    let r = report(&mut s, NOON);
    assert_eq!(
        (
            r.requests,
            r.first_request_ms,
            r.last_request_ms,
            r.in_flight
        ),
        (5, NOON, NOON + 4, 5)
    );
}

#[test]
fn unknown_wrong_revoked_and_expired_keys_are_refused() {
    let mut empty = KeyState::default();
    assert_eq!(
        admit(&mut empty, NOON).unwrap_err().reason,
        DenialReason::UnknownKey
    );

    let mut s = virtual_key(KeySettings {
        expires_at_ms: Some(NOON + 1_000),
        ..KeySettings::default()
    });
    let wrong = Admit {
        auth: Auth::Virtual {
            secret_hash: "hash-2".into(),
        },
        model: "gpt".into(),
        reserve: Money::ZERO,
        tokens: 0,
        lease: None,
        settle: None,
    };
    assert!(
        matches!(s.apply(Command::Admit(wrong), NOON), Reply::Denied(d) if d.reason == DenialReason::UnknownKey)
    );
    assert!(admit(&mut s, NOON).is_ok());
    assert_eq!(
        admit(&mut s, NOON + 1_000).unwrap_err().reason,
        DenialReason::Expired
    );
    s.apply(
        Command::Update {
            patch: serde_json::from_str(r#"{"expires_at_ms":null}"#).unwrap(),
        },
        NOON,
    );
    assert!(admit(&mut s, NOON + 1_000).is_ok());
    s.apply(Command::Revoke, NOON);
    assert_eq!(
        admit(&mut s, NOON + 2_000).unwrap_err().reason,
        DenialReason::Revoked
    );
}

#[test]
fn model_scope_is_enforced() {
    let mut s = virtual_key(KeySettings {
        allowed_models: Some(vec!["gpt".into()]),
        ..KeySettings::default()
    });
    assert!(admit(&mut s, NOON).is_ok());
    s.take_changes();
    let other = Admit {
        auth: auth(),
        model: "claude".into(),
        reserve: Money::ZERO,
        tokens: 0,
        lease: None,
        settle: None,
    };
    let check = s.apply(Command::Check { auth: auth() }, NOON);
    assert_eq!(
        check,
        Reply::Allowed {
            allowed_models: Some(vec!["gpt".into()])
        }
    );
    assert!(!s.has_changes(), "a check writes nothing");
    match s.apply(Command::Admit(other), NOON) {
        Reply::Denied(d) => {
            assert_eq!(d.reason, DenialReason::ModelNotAllowed);
            assert!(d.message.contains("`claude`"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_per_minute_hold_in_every_window_at_one_second_resolution() {
    let mut s = virtual_key(limits(RateLimits {
        rpm: Some(3),
        ..RateLimits::default()
    }));
    for t in [0, 10_000, 20_000] {
        admit(&mut s, NOON + t).unwrap();
    }
    let d = admit(&mut s, NOON + 30_000).unwrap_err();
    assert_eq!(d.reason, DenialReason::RequestLimit);
    assert_eq!(
        d.retry_after_ms,
        Some(30_999),
        "the first admission's bucket leaves the window at +60.999 s"
    );
    assert_eq!(d.rate.remaining_requests, Some(0));
    // Up to one bucket later than an exact log, never earlier.
    assert!(admit(&mut s, NOON + 60_000).is_err());
    assert!(admit(&mut s, NOON + 60_998).is_err());
    admit(&mut s, NOON + 60_999).unwrap();
    assert!(admit(&mut s, NOON + 61_000).is_err());
    match s.apply(Command::Usage { auth: auth() }, NOON) {
        Reply::Usage(r) => assert_eq!(r.requests, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_per_day_reset_at_utc_midnight() {
    let mut s = virtual_key(limits(RateLimits {
        rpd: Some(2),
        ..RateLimits::default()
    }));
    admit(&mut s, NOON).unwrap();
    admit(&mut s, NOON + 1).unwrap();
    let d = admit(&mut s, NOON + 2).unwrap_err();
    assert_eq!(d.retry_after_ms, Some(DAY_MS / 2 - 2));
    admit(&mut s, NOON + DAY_MS / 2).unwrap();
}

#[test]
fn tokens_per_minute_count_reservations_then_actual_usage() {
    let mut s = virtual_key(limits(RateLimits {
        tpm: Some(1_000),
        ..RateLimits::default()
    }));
    let r1 = admit_with(&mut s, NOON, Money::ZERO, 600).unwrap();
    let d = admit_with(&mut s, NOON + 1, Money::ZERO, 500).unwrap_err();
    assert_eq!(d.reason, DenialReason::TokenLimit);
    assert_eq!(d.retry_after_ms, Some(MINUTE_MS + 999 - 1));
    // The request used 100 tokens, not 600: the window now has room.
    assert!(settle(&mut s, r1, Money::ZERO, 60, 40));
    admit_with(&mut s, NOON + 2, Money::ZERO, 900).unwrap();
    // A request larger than the whole window can never pass.
    assert_eq!(
        admit_with(&mut s, NOON + 3, Money::ZERO, 5_000)
            .unwrap_err()
            .retry_after_ms,
        None
    );
}

#[test]
fn concurrency_counts_requests_in_flight() {
    let mut s = virtual_key(limits(RateLimits {
        max_concurrent: Some(2),
        ..RateLimits::default()
    }));
    let a = admit(&mut s, NOON).unwrap();
    admit(&mut s, NOON).unwrap();
    assert_eq!(
        admit(&mut s, NOON).unwrap_err().reason,
        DenialReason::ConcurrencyLimit
    );
    settle(&mut s, a, Money::ZERO, 1, 1);
    admit(&mut s, NOON).unwrap();
}

#[test]
fn budget_admits_exactly_what_the_reservations_allow() {
    let mut s = virtual_key(budgets(Budgets {
        total_usd: Some(usd(1.0)),
        ..Budgets::default()
    }));
    // 100 requests arrive before any settles: each may cost up to $0.30.
    let admitted: Vec<u64> = (0..100)
        .filter_map(|_| admit_with(&mut s, NOON, usd(0.30), 0).ok())
        .collect();
    assert_eq!(admitted.len(), 3, "3 × $0.30 fits in $1, 4 do not");
    let d = admit_with(&mut s, NOON, usd(0.30), 0).unwrap_err();
    assert_eq!(d.reason, DenialReason::BudgetExceeded);
    assert_eq!(
        d.retry_after_ms,
        Some(1_000),
        "held by the three in flight: retry in a moment"
    );
    // They cost $0.10 each; the freed reservations admit more.
    for r in &admitted {
        assert!(settle(&mut s, *r, usd(0.10), 10, 10));
    }
    let r = report(&mut s, NOON);
    assert_eq!(r.spent_total_usd, usd(0.30));
    assert_eq!(r.reserved_usd, Money::ZERO);
    // $0.70 left: two more $0.30 reservations, not three.
    assert_eq!(
        (0..10)
            .filter(|_| admit_with(&mut s, NOON, usd(0.30), 0).is_ok())
            .count(),
        2
    );
}

#[test]
fn a_budget_refusal_says_when_a_retry_can_pass() {
    let mut s = virtual_key(budgets(Budgets {
        total_usd: Some(usd(1.0)),
        daily_usd: Some(usd(2.0)),
        ..Budgets::default()
    }));
    let first = admit_with(&mut s, NOON, usd(0.6), 0).unwrap();
    // Only the request in flight stands in the way: it settles soon.
    let d = admit_with(&mut s, NOON, usd(0.6), 0).unwrap_err();
    assert_eq!(d.retry_after_ms, Some(1_000));
    assert!(
        d.message.contains("held by requests in flight"),
        "{}",
        d.message
    );
    // Spent, and a lifetime budget never resets: no retry passes.
    assert!(settle(&mut s, first, usd(0.6), 10, 10));
    let d = admit_with(&mut s, NOON, usd(0.6), 0).unwrap_err();
    assert_eq!(d.retry_after_ms, None);
    assert!(
        d.message
            .contains("total budget of $1.000000 has no room for this request"),
        "{}",
        d.message
    );
    // Dearer than a whole budget: never, whatever is spent.
    let d = admit_with(&mut s, NOON, usd(2.5), 0).unwrap_err();
    assert_eq!(d.retry_after_ms, None);
    assert!(
        d.message.contains("more than your whole daily budget"),
        "{}",
        d.message
    );
}

#[test]
fn settled_total_never_exceeds_the_budget_when_costs_stay_within_reservations() {
    let mut s = virtual_key(budgets(Budgets {
        total_usd: Some(usd(0.05)),
        ..Budgets::default()
    }));
    // Deterministic "random" interleaving of admissions and settlements.
    let mut seed: u64 = 7;
    let mut open: Vec<(u64, Money)> = vec![];
    for _ in 0..10_000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let reserve = Money(1 + (seed >> 40) % 2_000_000_000);
        if seed.is_multiple_of(3) && !open.is_empty() {
            let (r, max) = open.remove((seed >> 20) as usize % open.len());
            settle(&mut s, r, Money((seed >> 8) % (max.0 + 1)), 1, 1);
        } else if let Ok(r) = admit_with(&mut s, NOON, reserve, 0) {
            open.push((r, reserve));
        }
        let rep = report(&mut s, NOON);
        assert!(rep.spent_total_usd.plus(rep.reserved_usd) <= usd(0.05));
    }
}

#[test]
fn a_settlement_is_charged_once() {
    let mut s = virtual_key(KeySettings::default());
    let r = admit_with(&mut s, NOON, usd(1.0), 0).unwrap();
    assert!(settle(&mut s, r, usd(0.25), 1, 1));
    assert!(
        !settle(&mut s, r, usd(0.25), 1, 1),
        "a repeated settlement is a duplicate"
    );
    assert_eq!(report(&mut s, NOON).spent_total_usd, usd(0.25));
}

#[test]
fn a_batch_sent_twice_is_applied_once() {
    let mut s = KeyState::default();
    let c = charge(Source::Record, "m", usd(0.5), 1, 1);
    sync(&mut s, NOON, 7, vec![c.clone()], vec![]);
    sync(&mut s, NOON, 7, vec![c.clone()], vec![]);
    sync(&mut s, NOON, 6, vec![c.clone()], vec![]);
    assert_eq!(report(&mut s, NOON).spent_total_usd, usd(0.5));
    sync(&mut s, NOON, 8, vec![c], vec![]);
    let r = report(&mut s, NOON);
    assert_eq!((r.spent_total_usd, r.requests), (usd(1.0), 2));
}

#[test]
fn unsettled_reservations_expire_at_the_reserved_amount() {
    let mut s = virtual_key(KeySettings::default());
    let r = admit_with(&mut s, NOON, usd(0.40), 0).unwrap();
    assert_eq!(s.next_alarm_ms(), Some(NOON + RESERVATION_TTL_MS));
    s.take_changes();
    let reply = s.apply(Command::Expire, NOON + RESERVATION_TTL_MS - 1);
    assert!(!s.has_changes());
    assert_eq!(
        reply,
        Reply::Expired {
            next_alarm_ms: Some(NOON + RESERVATION_TTL_MS)
        }
    );
    let reply = s.apply(Command::Expire, NOON + RESERVATION_TTL_MS);
    assert!(s.has_changes());
    assert_eq!(
        reply,
        Reply::Expired {
            next_alarm_ms: None
        }
    );
    let rep = report(&mut s, NOON);
    assert_eq!((rep.spent_total_usd, rep.in_flight), (usd(0.40), 0));
    assert_eq!(rep.by_day[0].errors, 1);
    // The late settlement is not charged again.
    assert!(!settle(&mut s, r, usd(0.01), 1, 1));
    assert_eq!(report(&mut s, NOON).spent_total_usd, usd(0.40));
}

#[test]
fn daily_and_monthly_budgets_follow_the_utc_calendar() {
    let mut s = virtual_key(budgets(Budgets {
        daily_usd: Some(usd(1.0)),
        monthly_usd: Some(usd(1.5)),
        ..Budgets::default()
    }));
    let r = admit_with(&mut s, NOON, usd(1.0), 0).unwrap();
    settle(&mut s, r, usd(1.0), 1, 1);
    let d = admit_with(&mut s, NOON, usd(0.01), 0).unwrap_err();
    assert!(d.message.contains("daily budget"), "{}", d.message);
    assert_eq!(d.retry_after_ms, Some(DAY_MS / 2));
    // Next day: the daily budget is fresh, the monthly one has $0.50 left.
    let tomorrow = NOON + DAY_MS;
    let r = admit_with(&mut s, tomorrow, usd(0.5), 0).unwrap();
    let c = Charge {
        admitted_ms: tomorrow,
        ..charge(Source::Reservation { id: r }, "gpt", usd(0.5), 1, 1)
    };
    sync(&mut s, tomorrow, next_seq(), vec![c], vec![]);
    let d = admit_with(&mut s, tomorrow, usd(0.01), 0).unwrap_err();
    assert!(d.message.contains("monthly budget"), "{}", d.message);
    // 2026-12-01T00:00:00Z is 8.5 days after 2026-11-22T12:00Z.
    assert_eq!(d.retry_after_ms, Some(8 * DAY_MS + DAY_MS / 2));
    let rep = report(&mut s, tomorrow);
    assert_eq!(
        (rep.spent_today_usd, rep.spent_this_month_usd),
        (usd(0.5), usd(1.5))
    );
    let dec = NOON + 10 * DAY_MS;
    admit_with(&mut s, dec, usd(1.0), 0).unwrap();
}

#[test]
fn usage_is_rolled_up_by_day_and_model_and_bounded() {
    let mut s = KeyState::default();
    for day in 0..(USAGE_DAYS as u64 + 5) {
        let now = NOON + day * DAY_MS;
        let c = Charge {
            source: Source::Record,
            admitted_ms: now,
            model: "m".into(),
            requests: 1,
            errors: 0,
            input_tokens: 3,
            output_tokens: 4,
            cached_tokens: 1,
            cache_hits: day % 2,
            cost: usd(0.5),
        };
        sync(&mut s, now, day + 1, vec![c], vec![]);
    }
    let rep = report(&mut s, NOON);
    assert_eq!(rep.by_day.len(), USAGE_DAYS);
    assert_eq!(rep.by_day[0].date, "2026-11-26");
    let last = rep.by_day.last().unwrap();
    assert_eq!(
        (
            last.requests,
            last.input_tokens,
            last.output_tokens,
            last.cached_tokens
        ),
        (1, 3, 4, 1)
    );
    assert_eq!(last.cost_usd, usd(0.5));
    // Cache hits are counted per day (every other day had one here).
    let hits: Vec<u64> = rep.by_day.iter().map(|d| d.cache_hits).collect();
    assert!(hits.iter().all(|&h| h <= 1) && hits.contains(&1) && hits.contains(&0));
}

#[test]
fn admin_commands_manage_the_record() {
    let mut s = virtual_key(KeySettings::default());
    let record = KeyRecord {
        id: "k1".into(),
        settings: KeySettings::default(),
        secret_hash: "x".into(),
        secret_hint: "x".into(),
        revoked: false,
        created_ms: 0,
        updated_ms: 0,
    };
    assert!(matches!(
        s.apply(Command::Create { record }, NOON),
        Reply::Rejected { status: 409, .. }
    ));
    let reply = s.apply(
        Command::Rotate {
            secret_hash: "hash-2".into(),
            secret_hint: "sk-gw-k1_…wxyz".into(),
        },
        NOON + 5,
    );
    assert!(
        matches!(reply, Reply::Key(v) if v.secret_hint.ends_with("wxyz") && v.updated_ms == NOON + 5)
    );
    assert_eq!(
        admit(&mut s, NOON).unwrap_err().reason,
        DenialReason::UnknownKey,
        "the old secret stops working"
    );
    assert!(matches!(
        KeyState::default().apply(Command::Get, NOON),
        Reply::Rejected { status: 404, .. }
    ));
    // A revoked key is not brought back by a new secret.
    s.apply(Command::Revoke, NOON + 6);
    assert!(matches!(
        s.apply(
            Command::Rotate {
                secret_hash: "hash-3".into(),
                secret_hint: "h".into(),
            },
            NOON + 7,
        ),
        Reply::Rejected { status: 409, .. }
    ));
}

#[test]
fn calendar_helpers_match_known_dates() {
    use super::calendar::{civil_from_days, days_from_civil};
    assert_eq!(date_string(0), "1970-01-01");
    assert_eq!(date_string(NOON), "2026-11-21");
    assert_eq!(date_string(951_782_400_000), "2000-02-29");
    assert_eq!(month_index(NOON), 2026 * 12 + 10);
    assert_eq!(next_month_ms(NOON), 1_796_083_200_000); // 2026-12-01
    assert_eq!(
        next_month_ms(1_796_083_200_000 + 20 * DAY_MS),
        1_798_761_600_000
    ); // 2027-01-01
    for d in [-1_000_000, -1, 0, 59, 60, 365, 10_957, 20_000, 2_000_000] {
        let (y, m, day) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, day), d);
    }
}

#[test]
fn commands_have_a_stable_wire_form() {
    let a = Command::Admit(Admit {
        auth: Auth::Static,
        model: "m".into(),
        reserve: Money(5),
        tokens: 7,
        lease: None,
        settle: None,
    });
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"op":"admit","auth":{"kind":"static"},"model":"m","reserve":5,"tokens":7}"#
    );
    let back: Command = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
}

/// Stores changed rows the way the object's table does.
fn store(table: &mut BTreeMap<(String, String), String>, s: &mut KeyState) -> usize {
    let rows = s.take_changes();
    let n = rows.len();
    for r in rows {
        let k = (r.kind.to_owned(), r.key);
        match r.value {
            Some(v) => table.insert(k, v),
            None => table.remove(&k),
        };
    }
    n
}

fn reload(table: &BTreeMap<(String, String), String>) -> KeyState {
    KeyState::load(
        table
            .iter()
            .map(|((k, key), v)| (k.clone(), key.clone(), v.clone())),
    )
    .unwrap()
}

#[test]
fn state_round_trips_through_its_rows() {
    let mut table = BTreeMap::new();
    let mut s = virtual_key(KeySettings {
        limits: RateLimits {
            rpm: Some(100),
            tpm: Some(100_000),
            ..RateLimits::default()
        },
        budgets: Budgets {
            daily_usd: Some(usd(10.0)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    });
    store(&mut table, &mut s);
    let r = admit_with(&mut s, NOON, Money(123_456_789), 9).unwrap();
    admit_with(&mut s, NOON + 1_500, Money(5), 9).unwrap();
    store(&mut table, &mut s);
    settle(&mut s, r, Money(987_654_321), 1, 2);
    lease(&mut s, NOON + 2_000, ask(10, usd(1.0), Money(1))).unwrap();
    let view = match s.apply(Command::Get, NOON) {
        Reply::Key(v) => *v,
        other => panic!("{other:?}"),
    };
    s.apply(Command::RegistryPut { key: view }, NOON);
    store(&mut table, &mut s);
    assert_eq!(reload(&table), s);
    // Rows that go away are deleted: a settled reservation, an aged bucket.
    s.apply(Command::Expire, NOON + DAY_MS);
    admit(&mut s, NOON + DAY_MS).unwrap();
    store(&mut table, &mut s);
    assert_eq!(reload(&table), s);
    assert!(!table.keys().any(|(k, _)| k == "lease"));
}

#[test]
fn a_decision_writes_the_same_rows_for_a_fresh_and_a_busy_key() {
    let settings = KeySettings {
        limits: RateLimits {
            rpm: Some(50_000),
            tpm: Some(50_000_000),
            ..RateLimits::default()
        },
        budgets: Budgets {
            monthly_usd: Some(usd(1_000_000.0)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    };
    let rows_per_decision = |s: &mut KeyState| {
        s.take_changes();
        let r = admit_with(s, NOON + 30, usd(0.01), 100).unwrap();
        let admit_rows = s.take_changes().len();
        settle(s, r, usd(0.001), 10, 10);
        (admit_rows, s.take_changes().len())
    };
    let mut fresh = virtual_key(settings.clone());
    let mut busy = virtual_key(settings);
    busy.seed_history(NOON, USAGE_DAYS as u64, 20, 49_000);
    busy.take_changes();
    assert_eq!(busy.report(NOON).by_day.len(), USAGE_DAYS * 20);
    let (a1, s1) = rows_per_decision(&mut fresh);
    let (a2, s2) = rows_per_decision(&mut busy);
    assert_eq!((a1, s1), (a2, s2));
    assert!(a1 <= 3 && s1 <= 5, "{a1} rows to admit, {s1} to settle");
}

#[test]
fn legacy_documents_are_converted_to_rows() {
    let legacy = r#"{"record":{"id":"k1","settings":{"name":"t","limits":{"rpm":5}},"secret_hash":"hash-1","secret_hint":"h","created_ms":1,"updated_ms":1},
        "requests":3,"first_request_ms":1,"last_request_ms":2,
        "minute":[{"at_ms":1795262400000,"tokens":50,"reservation":2}],
        "day_requests":{"day":20778,"count":3},
        "spent_day":{"window":20778,"amount":5},"spent_month":{"window":24322,"amount":5},"spent_total":5,
        "reservations":{"2":{"amount":7,"model":"gpt","admitted_ms":1795262400000,"expires_ms":1795263300000}},
        "next_reservation":3,
        "usage":{"2026-11-21\tgpt":{"requests":2,"errors":0,"input_tokens":1,"output_tokens":1,"cached_tokens":0,"cost":5}}}"#;
    let mut s = KeyState::from_legacy_json(legacy).unwrap();
    let mut table = BTreeMap::new();
    store(&mut table, &mut s);
    let mut s = reload(&table);
    let r = report(&mut s, NOON);
    assert_eq!(
        (r.requests, r.in_flight, r.spent_total_usd),
        (3, 1, Money(5))
    );
    assert_eq!(r.reserved_usd, Money(7));
    assert_eq!(s.window.totals().tokens, 50);
    // The converted reservation settles, and ids continue where they were.
    assert!(settle(&mut s, 2, Money(6), 1, 1));
    assert_eq!(admit(&mut s, NOON + 1).unwrap(), 3);
}

#[test]
fn every_reply_crosses_the_object_boundary_as_json() {
    // The object answers in JSON; a reply serde cannot encode is a 500.
    let mut s = virtual_key(KeySettings {
        limits: RateLimits {
            rpm: Some(1),
            ..RateLimits::default()
        },
        ..KeySettings::default()
    });
    let view = match s.apply(Command::Get, NOON) {
        Reply::Key(v) => *v,
        other => panic!("{other:?}"),
    };
    let admit = || Admit {
        auth: auth(),
        model: "gpt".into(),
        reserve: Money(1),
        tokens: 1,
        lease: Some(ask(1, Money(1), Money(1))),
        settle: None,
    };
    let mut replies = vec![
        s.apply(Command::Admit(admit()), NOON),
        s.apply(Command::Admit(admit()), NOON),
        sync(
            &mut s,
            NOON,
            1,
            vec![charge(Source::Reservation { id: 0 }, "gpt", Money(1), 1, 1)],
            vec![],
        ),
        s.apply(Command::Expire, NOON),
        s.apply(Command::Check { auth: auth() }, NOON),
        s.apply(Command::Usage { auth: auth() }, NOON),
        s.apply(Command::Get, NOON),
        s.apply(Command::RegistryPut { key: view }, NOON),
        s.apply(Command::RegistryList, NOON),
    ];
    replies.push(KeyState::default().apply(Command::Get, NOON));
    let mut fresh = virtual_key(KeySettings::default());
    replies.push(lease_reply(&mut fresh));
    for reply in replies {
        let json = serde_json::to_string(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        let back: Reply = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(back, reply);
    }
}

fn lease_reply(s: &mut KeyState) -> Reply {
    s.apply(
        Command::Sync(Sync {
            holder: "h".into(),
            seq: 0,
            charges: vec![],
            done: vec![],
            ask: Some(ask(10, usd(1.0), Money(1))),
            answered: 0,
            in_flight: 0,
            held: vec![],
        }),
        NOON,
    )
}

#[test]
fn a_recorded_request_is_counted_and_charged_once() {
    let mut s = KeyState::default();
    let c = Charge {
        input_tokens: 5,
        output_tokens: 7,
        ..charge(Source::Record, "m", usd(0.25), 0, 0)
    };
    let reply = sync(&mut s, NOON, 1, vec![c], vec![]);
    assert!(s.has_changes());
    assert!(matches!(reply, Reply::Synced { grant: None, .. }));
    let r = report(&mut s, NOON);
    assert_eq!((r.requests, r.first_request_ms, r.in_flight), (1, NOON, 0));
    assert_eq!(r.spent_total_usd, usd(0.25));
    assert_eq!(r.by_day[0].output_tokens, 7);
}

// ---- Leases (the object's side) ----------------------------------------------

fn limited() -> KeySettings {
    KeySettings {
        limits: RateLimits {
            rpm: Some(100),
            rpd: Some(1_000),
            tpm: Some(100_000),
            max_concurrent: Some(20),
        },
        budgets: Budgets {
            total_usd: Some(usd(10.0)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    }
}

#[test]
fn a_lease_takes_at_most_a_quarter_of_each_headroom() {
    let mut s = virtual_key(limited());
    let g = lease(&mut s, NOON, ask(1_000, usd(100.0), usd(0.01))).unwrap();
    assert_eq!(g.admit_until_ms, NOON + 10_000);
    assert_eq!(g.requests, Some(25), "a quarter of rpm 100");
    assert_eq!(g.tokens, Some(25_000));
    assert_eq!(g.money, Some(usd(2.5)));
    assert_eq!(g.slots, Some(8), "asked 8 of the 10 a half of 20 allows");
    // What it holds counts against the key: the next lease is a quarter of
    // what is left.
    let g2 = lease(&mut s, NOON, ask(1_000, usd(100.0), usd(0.01))).unwrap();
    assert_eq!(g2.requests, Some(18));
    assert_eq!(g2.money, Some(usd(1.875)));
    let r = report(&mut s, NOON);
    assert_eq!(r.reserved_usd, usd(4.375));
    assert_eq!(r.leases, 2);
}

#[test]
fn near_a_limit_no_lease_is_granted() {
    // $0.03 of headroom: a quarter ($0.0075) would not cover one $0.01
    // request, so no lease.
    let mut s = virtual_key(KeySettings {
        budgets: Budgets {
            total_usd: Some(usd(0.03)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    });
    assert_eq!(lease(&mut s, NOON, ask(10, usd(1.0), usd(0.01))), None);
    // Per-request admission still admits exactly what fits.
    assert_eq!(
        (0..5)
            .filter(|_| admit_with(&mut s, NOON, usd(0.01), 0).is_ok())
            .count(),
        3
    );
}

#[test]
fn strict_keys_get_no_lease() {
    let mut s = virtual_key(KeySettings {
        strict_admission: true,
        ..KeySettings::default()
    });
    assert_eq!(lease(&mut s, NOON, ask(10, usd(1.0), Money(1))), None);
}

#[test]
fn a_lease_of_an_unlimited_key_is_unlimited() {
    let mut s = virtual_key(KeySettings::default());
    let g = lease(&mut s, NOON, ask(10, usd(1.0), Money(1))).unwrap();
    assert_eq!(
        (g.requests, g.tokens, g.money, g.slots),
        (None, None, None, None)
    );
}

#[test]
fn a_lease_never_outlives_the_day_or_the_key() {
    let mut s = virtual_key(KeySettings {
        expires_at_ms: Some(NOON + 3_000),
        ..limited()
    });
    let g = lease(&mut s, NOON, ask(10, usd(1.0), Money(1))).unwrap();
    assert_eq!(g.admit_until_ms, NOON + 3_000);
    let mut s = virtual_key(limited());
    let before_midnight = NOON + DAY_MS / 2 - 4_000;
    let g = lease(&mut s, before_midnight, ask(10, usd(1.0), Money(1))).unwrap();
    assert_eq!(g.admit_until_ms, NOON + DAY_MS / 2);
}

#[test]
fn leased_slots_count_at_the_last_instant_they_can_be_used() {
    let mut s = virtual_key(limits(RateLimits {
        rpm: Some(40),
        ..RateLimits::default()
    }));
    let g = lease(&mut s, NOON, ask(100, usd(1.0), Money(0))).unwrap();
    assert_eq!(g.requests, Some(10));
    // Thirty more per request; then the window is full, leased slots included.
    for _ in 0..30 {
        admit(&mut s, NOON).unwrap();
    }
    assert!(admit(&mut s, NOON).is_err());
    // The thirty age out at +60.999 s; the leased ten (usable until
    // +9.999 s) stay counted until +69.999 s.
    assert_eq!(
        (0..31)
            .filter(|_| admit(&mut s, NOON + 61_000).is_ok())
            .count(),
        30
    );
    assert!(admit(&mut s, NOON + 69_998).is_err());
    admit(&mut s, NOON + 69_999).unwrap();
}

#[test]
fn a_small_limit_is_decided_request_by_request() {
    // rpm 5: a quarter is one request, fewer than a lease is worth; with
    // none held elsewhere, five concurrent requests are all admitted.
    let mut s = virtual_key(limits(RateLimits {
        rpm: Some(5),
        ..RateLimits::default()
    }));
    assert_eq!(lease(&mut s, NOON, ask(100, usd(1.0), Money(0))), None);
    assert_eq!((0..8).filter(|_| admit(&mut s, NOON).is_ok()).count(), 5);
}

#[test]
fn a_returned_lease_gives_back_what_it_did_not_use() {
    let mut s = virtual_key(limited());
    let g = lease(&mut s, NOON, ask(1_000, usd(100.0), usd(0.01))).unwrap();
    // 5 requests used, $0.20 spent, 3,000 tokens.
    let c = Charge {
        requests: 5,
        input_tokens: 2_000,
        output_tokens: 1_000,
        ..charge(Source::Lease { id: g.lease }, "gpt", usd(0.2), 0, 0)
    };
    sync(&mut s, NOON + 4_000, 1, vec![c], vec![]);
    let r = report(&mut s, NOON + 4_000);
    assert_eq!(r.spent_total_usd, usd(0.2));
    assert_eq!(r.reserved_usd, usd(2.3), "held, less what was spent");
    assert_eq!(r.requests, 5);
    let done = LeaseDone {
        lease: g.lease,
        used_requests: 5,
        used_tokens: 3_000,
    };
    sync(&mut s, NOON + 4_500, 2, vec![], vec![done]);
    let r = report(&mut s, NOON + 4_500);
    assert_eq!((r.reserved_usd, r.leases), (Money::ZERO, 0));
    assert_eq!(s.window.totals().requests, 5);
    assert_eq!(s.window.totals().tokens, 3_000);
    assert_eq!(s.meta.day_requests.count, 5, "rpd gets its 20 unused back");
    // The used slots moved to when the lease was returned: they leave the
    // window a minute after that, not after the lease's end.
    s.apply(Command::Expire, NOON + 65_000);
    admit(&mut s, NOON + 65_000).unwrap();
    assert_eq!(s.window.totals().requests, 1);
}

#[test]
fn a_lease_whose_isolate_vanished_is_charged_in_full_when_it_expires() {
    let mut s = virtual_key(limited());
    let g = lease(&mut s, NOON, ask(1_000, usd(100.0), usd(0.01))).unwrap();
    let hold_until = NOON + 10_000 + 60_000 + lease::REPORT_SLACK_MS;
    assert_eq!(s.next_alarm_ms(), Some(hold_until));
    s.apply(Command::Expire, hold_until - 1);
    assert_eq!(report(&mut s, NOON).spent_total_usd, Money::ZERO);
    s.apply(Command::Expire, hold_until);
    let r = report(&mut s, NOON);
    assert_eq!((r.spent_total_usd, r.reserved_usd), (usd(2.5), Money::ZERO));
    assert_eq!(r.by_day[0].model, UNREPORTED_MODEL);
    // A report that comes after is not charged again.
    let c = charge(Source::Lease { id: g.lease }, "gpt", usd(0.2), 1, 1);
    sync(&mut s, hold_until + 1, 1, vec![c], vec![]);
    assert_eq!(report(&mut s, NOON).spent_total_usd, usd(2.5));
}

#[test]
fn a_lease_is_refused_to_a_wrong_or_revoked_key() {
    let mut s = virtual_key(limited());
    let mut a = ask(10, usd(1.0), Money(1));
    a.auth = Auth::Virtual {
        secret_hash: "nope".into(),
    };
    let reply = s.apply(
        Command::Sync(Sync {
            holder: "h".into(),
            seq: 0,
            charges: vec![],
            done: vec![],
            ask: Some(a),
            answered: 0,
            in_flight: 0,
            held: vec![],
        }),
        NOON,
    );
    assert!(
        matches!(reply, Reply::Synced { grant: None, refused: Some(d), .. } if d.reason == DenialReason::UnknownKey)
    );
    s.apply(Command::Revoke, NOON);
    assert!(matches!(
        lease_reply(&mut s),
        Reply::Synced {
            refused: Some(_),
            ..
        }
    ));
}

#[test]
fn a_denial_while_leases_hold_headroom_says_when_it_comes_back() {
    let mut s = virtual_key(KeySettings {
        budgets: Budgets {
            total_usd: Some(usd(1.0)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    });
    lease(&mut s, NOON, ask(100, usd(100.0), usd(0.01))).unwrap();
    let d = admit_with(&mut s, NOON, usd(0.9), 0).unwrap_err();
    assert_eq!(d.reason, DenialReason::BudgetExceeded);
    assert_eq!(d.retry_after_ms, Some(12_000));
}

fn outbox_alerts(s: &KeyState) -> Vec<(crate::observe::alerts::AlertKind, String)> {
    s.outbox()
        .into_iter()
        .filter_map(|(_, o)| match o {
            Outgoing::Alert(a) => Some((a.event, a.target)),
            Outgoing::Correction(_) => None,
        })
        .collect()
}

#[test]
fn budget_crossings_are_queued_once_each_in_the_charging_step() {
    use crate::observe::alerts::AlertKind;
    let mut s = virtual_key(KeySettings {
        name: "t".into(),
        budgets: Budgets {
            daily_usd: Some(usd(1.0)),
            ..Budgets::default()
        },
        ..KeySettings::default()
    });
    for (cost, expect) in [
        (0.5, vec![]),
        (0.3, vec![AlertKind::Budget80]),
        (0.1, vec![AlertKind::Budget80]),
        (0.1, vec![AlertKind::Budget80, AlertKind::Budget100]),
    ] {
        let id = admit_with(&mut s, NOON, usd(cost), 0).unwrap();
        assert!(settle(&mut s, id, usd(cost), 1, 1));
        let got: Vec<AlertKind> = outbox_alerts(&s).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, expect, "after {cost}");
    }
    assert_eq!(outbox_alerts(&s)[1].1, "key:k1:daily");
    // The rows survive a reload; once sent they are gone for good.
    let ids: Vec<u64> = s.outbox().iter().map(|(id, _)| *id).collect();
    let rows = s.take_changes();
    let mut loaded = KeyState::load(
        rows.into_iter()
            .filter_map(|r| Some((r.kind.to_owned(), r.key, r.value?))),
    )
    .unwrap();
    assert_eq!(loaded.outbox().len(), 2);
    loaded.apply(Command::OutboxSent { ids }, NOON);
    assert!(loaded.outbox().is_empty());
    assert!(loaded.has_changes());
}

/// Analytics sees every settlement an isolate reports; the key's object
/// adds what only it knows. Their sum is the key's usage, to the
/// picodollar: here a request settled normally, a reservation that
/// expired unsettled, and a settlement that came after its expiry.
#[test]
fn corrections_make_reported_settlements_sum_to_the_usage_report() {
    let mut s = virtual_key(limits(RateLimits::default()));
    let mut seen = (0i64, 0i64, 0i64); // requests, tokens, cost as isolates reported
    let settled = admit_with(&mut s, NOON, usd(0.2), 0).unwrap();
    assert!(settle(&mut s, settled, usd(0.1), 10, 5));
    seen = (seen.0 + 1, seen.1 + 15, seen.2 + usd(0.1).0 as i64);
    let _lost = admit_with(&mut s, NOON, usd(0.3), 0).unwrap();
    let late = admit_with(&mut s, NOON, usd(0.4), 0).unwrap();
    s.apply(Command::Expire, NOON + RESERVATION_TTL_MS);
    // The late one's isolate reports after all (and analytics counts it).
    let c = charge(Source::Reservation { id: late }, "gpt", usd(0.05), 7, 3);
    sync(
        &mut s,
        NOON + RESERVATION_TTL_MS,
        next_seq(),
        vec![c],
        vec![],
    );
    seen = (seen.0 + 1, seen.1 + 10, seen.2 + usd(0.05).0 as i64);
    let mut total = seen;
    for (_, o) in s.outbox() {
        if let Outgoing::Correction(c) = o {
            total.0 += c.requests;
            total.1 += c.input_tokens + c.output_tokens;
            total.2 += c.cost_pico;
        }
    }
    let r = report(&mut s, NOON + RESERVATION_TTL_MS);
    let by_day = r.by_day.iter().fold((0i64, 0i64, 0i64), |a, d| {
        (
            a.0 + d.requests as i64,
            a.1 + (d.input_tokens + d.output_tokens) as i64,
            a.2 + d.cost_pico as i64,
        )
    });
    assert_eq!(total, by_day);
    assert_eq!(by_day.2 as u64, r.spent_total_usd.0);
    assert_eq!(r.spent_total_usd, usd(0.1).plus(usd(0.3)).plus(usd(0.4)));
}
