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
        s.apply(Command::Create { record }, NOON).0,
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
    };
    match s.apply(Command::Admit(a), now).0 {
        Reply::Admitted { reservation, .. } => Ok(reservation),
        Reply::Denied(d) => Err(d),
        other => panic!("{other:?}"),
    }
}

fn admit(s: &mut KeyState, now: u64) -> Result<u64, Box<Denial>> {
    admit_with(s, now, Money::ZERO, 0)
}

fn settle(s: &mut KeyState, reservation: u64, cost: Money, input: u64, output: u64) -> bool {
    let usage = UsageEvent {
        model: "gpt".into(),
        input_tokens: input,
        output_tokens: output,
        ..UsageEvent::default()
    };
    match s
        .apply(
            Command::Settle(Settle {
                reservation,
                cost,
                usage,
            }),
            NOON,
        )
        .0
    {
        Reply::Settled { duplicate } => !duplicate,
        other => panic!("{other:?}"),
    }
}

fn report(s: &mut KeyState, now: u64) -> UsageReport {
    match s.apply(Command::Usage { auth: Auth::Admin }, now).0 {
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

#[test]
fn static_keys_have_no_limits_and_are_counted() {
    let mut s = KeyState::default();
    for i in 0..5 {
        let a = Admit {
            auth: Auth::Static,
            model: "m".into(),
            reserve: usd(1000.0),
            tokens: 1 << 40,
        };
        assert!(matches!(
            s.apply(Command::Admit(a), NOON + i).0,
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
    };
    assert!(
        matches!(s.apply(Command::Admit(wrong), NOON).0, Reply::Denied(d) if d.reason == DenialReason::UnknownKey)
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
    let other = Admit {
        auth: auth(),
        model: "claude".into(),
        reserve: Money::ZERO,
        tokens: 0,
    };
    let check = s.apply(Command::Check { auth: auth() }, NOON);
    assert_eq!(
        check,
        (
            Reply::Allowed {
                allowed_models: Some(vec!["gpt".into()])
            },
            false
        )
    );
    match s.apply(Command::Admit(other), NOON).0 {
        Reply::Denied(d) => {
            assert_eq!(d.reason, DenialReason::ModelNotAllowed);
            assert!(d.message.contains("`claude`"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_per_minute_are_exact_at_the_window_boundary() {
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
        Some(30_000),
        "the first admission leaves the window at +60 s"
    );
    assert_eq!(d.rate.remaining_requests, Some(0));
    // One millisecond early: still full. On the dot: room for one.
    assert!(admit(&mut s, NOON + 59_999).is_err());
    admit(&mut s, NOON + 60_000).unwrap();
    assert!(admit(&mut s, NOON + 60_001).is_err());
    match s.apply(Command::Usage { auth: auth() }, NOON).0 {
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
    assert_eq!(d.retry_after_ms, Some(MINUTE_MS - 1));
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
    assert_eq!(d.retry_after_ms, None, "a lifetime budget does not reset");
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
fn unsettled_reservations_expire_at_the_reserved_amount() {
    let mut s = virtual_key(KeySettings::default());
    let r = admit_with(&mut s, NOON, usd(0.40), 0).unwrap();
    assert_eq!(s.next_alarm_ms(), Some(NOON + RESERVATION_TTL_MS));
    let (reply, changed) = s.apply(Command::Expire, NOON + RESERVATION_TTL_MS - 1);
    assert!(!changed);
    assert_eq!(
        reply,
        Reply::Expired {
            next_alarm_ms: Some(NOON + RESERVATION_TTL_MS)
        }
    );
    let (reply, changed) = s.apply(Command::Expire, NOON + RESERVATION_TTL_MS);
    assert!(changed);
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
    settle(&mut s, r, usd(0.5), 1, 1);
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
        let a = Admit {
            auth: Auth::Static,
            model: "m".into(),
            reserve: Money::ZERO,
            tokens: 0,
        };
        let now = NOON + day * DAY_MS;
        let Reply::Admitted { reservation, .. } = s.apply(Command::Admit(a), now).0 else {
            panic!()
        };
        let usage = UsageEvent {
            model: "m".into(),
            input_tokens: 3,
            output_tokens: 4,
            cached_tokens: 1,
            error: false,
        };
        s.apply(
            Command::Settle(Settle {
                reservation,
                cost: usd(0.5),
                usage,
            }),
            now,
        );
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
        s.apply(Command::Create { record }, NOON).0,
        Reply::Rejected { status: 409, .. }
    ));
    let (reply, _) = s.apply(
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
        KeyState::default().apply(Command::Get, NOON).0,
        Reply::Rejected { status: 404, .. }
    ));
}

#[test]
fn calendar_helpers_match_known_dates() {
    assert_eq!(date_string(0), "1970-01-01");
    assert_eq!(date_string(NOON), "2026-11-21");
    assert_eq!(date_string(951_782_400_000), "2000-02-29");
    assert_eq!(month_index(NOON), 2026 * 12 + 10);
    assert_eq!(next_month_ms(NOON), Some(1_796_083_200_000)); // 2026-12-01
    assert_eq!(
        next_month_ms(1_796_083_200_000 + 20 * DAY_MS),
        Some(1_798_761_600_000)
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
    });
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"op":"admit","auth":{"kind":"static"},"model":"m","reserve":5,"tokens":7}"#
    );
    let back: Command = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
    // State round-trips through storage exactly.
    let mut s = virtual_key(KeySettings::default());
    let r = admit_with(&mut s, NOON, Money(123_456_789), 9).unwrap();
    settle(&mut s, r, Money(987_654_321), 1, 2);
    let stored: KeyState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(stored, s);
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
    let view = match s.apply(Command::Get, NOON).0 {
        Reply::Key(v) => *v,
        other => panic!("{other:?}"),
    };
    let mut replies = vec![
        s.apply(
            Command::Admit(Admit {
                auth: auth(),
                model: "gpt".into(),
                reserve: Money(1),
                tokens: 1,
            }),
            NOON,
        )
        .0,
        s.apply(
            Command::Admit(Admit {
                auth: auth(),
                model: "gpt".into(),
                reserve: Money(1),
                tokens: 1,
            }),
            NOON,
        )
        .0,
        s.apply(
            Command::Settle(Settle {
                reservation: 0,
                cost: Money(1),
                usage: UsageEvent::default(),
            }),
            NOON,
        )
        .0,
        s.apply(Command::Expire, NOON).0,
        s.apply(Command::Check { auth: auth() }, NOON).0,
        s.apply(Command::Usage { auth: auth() }, NOON).0,
        s.apply(Command::Get, NOON).0,
        s.apply(Command::RegistryPut { key: view }, NOON).0,
        s.apply(Command::RegistryList, NOON).0,
    ];
    replies.push(KeyState::default().apply(Command::Get, NOON).0);
    for reply in replies {
        let json = serde_json::to_string(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        let back: Reply = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(back, reply);
    }
}

#[test]
fn a_recorded_request_is_counted_and_charged_once() {
    let mut s = KeyState::default();
    let usage = UsageEvent {
        model: "m".into(),
        input_tokens: 5,
        output_tokens: 7,
        cached_tokens: 0,
        error: false,
    };
    let (reply, changed) = s.apply(
        Command::Record {
            cost: usd(0.25),
            usage,
        },
        NOON,
    );
    assert!(changed);
    assert_eq!(reply, Reply::Settled { duplicate: false });
    let r = report(&mut s, NOON);
    assert_eq!((r.requests, r.first_request_ms, r.in_flight), (1, NOON, 0));
    assert_eq!(r.spent_total_usd, usd(0.25));
    assert_eq!(r.by_day[0].output_tokens, 7);
}
