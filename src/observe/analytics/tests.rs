use super::*;

const DAY1: u64 = 20_419 * DAY_MS; // 2025-11-27

fn event(at_ms: u64, key: &str, model: &str, cost: u64, latency_ms: u64) -> RequestEvent<'static> {
    let key: &'static str = Box::leak(key.to_owned().into_boxed_str());
    let model: &'static str = Box::leak(model.to_owned().into_boxed_str());
    RequestEvent {
        at_ms,
        key,
        model,
        provider: Some("mock"),
        target_model: Some("m-1"),
        location: Some("DFW"),
        status: 200,
        attempts: 1,
        input_tokens: 10,
        output_tokens: 5,
        cost: Money(cost),
        latency_ms,
        ttft_ms: latency_ms / 2,
        ..RequestEvent::default()
    }
}

fn query(pairs: &[(&str, &str)]) -> Query {
    Query::parse(pairs.iter().copied(), DAY1 + 5_000).unwrap()
}

#[test]
fn day_start_parses_real_dates_only() {
    assert_eq!(crate::limits::day_start_ms("2025-11-27"), Some(DAY1));
    assert_eq!(crate::limits::day_start_ms("1970-01-01"), Some(0));
    for bad in [
        "2025-02-30",
        "2025-13-01",
        "25-11-27",
        "2025-1-27x",
        "",
        "1969-12-31",
    ] {
        assert_eq!(crate::limits::day_start_ms(bad), None, "{bad}");
    }
}

#[test]
fn a_batch_is_applied_once_however_often_it_is_sent() {
    let mut r = Rollups::new("iso-1".into());
    r.add(&event(DAY1 + 10, "k1", "demo", 7, 20), DAY1 + 10);
    let batches = r.take(1_000, DAY1 + 10, true);
    assert_eq!(batches.len(), 1);
    let mut store = DayStore::default();
    assert!(store.ingest(&batches[0]));
    // The reply was lost: the same batch comes again.
    r.on_failure(&batches[0].day, 1_000, DAY1 + 20);
    let again = r.take(1_000, DAY1 + 5_000, false);
    assert_eq!(again, batches, "resent as is");
    assert!(!store.ingest(&again[0]), "ignored the second time");
    r.on_ack(&again[0].day, again[0].seq);
    assert!(r.is_idle());
    let a = answer(&query(&[]), &[store.query(&query(&[]))]);
    assert_eq!(a.totals.requests, 1);
    assert_eq!(a.totals.cost_pico, 7);
}

#[test]
fn nothing_is_sent_before_the_flush_interval_unless_forced() {
    let mut r = Rollups::new("iso".into());
    r.add(&event(DAY1, "k", "m", 1, 1), DAY1);
    assert_eq!(r.wakeup(1_000, DAY1), Some(DAY1 + 1_000));
    assert!(r.take(1_000, DAY1 + 999, false).is_empty());
    assert_eq!(r.take(1_000, DAY1 + 1_000, false).len(), 1);
    // While that batch is on its way, new figures wait for its answer.
    r.add(&event(DAY1 + 1_500, "k", "m", 1, 1), DAY1 + 1_500);
    assert!(r.take(1_000, DAY1 + 9_000, true).is_empty());
    r.on_ack(&date_string(DAY1), 1);
    let next = r.take(1_000, DAY1 + 9_000, false);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].seq, 2);
}

#[test]
fn each_request_lands_in_its_own_cell_whatever_came_before() {
    // The last cell's key is reused while the dimensions repeat; a request
    // with another key, status, hour or day, and one back on an earlier
    // cell after them, still lands in its own.
    let mut r = Rollups::new("iso".into());
    let h = HOUR_MS;
    let mut refused = event(DAY1, "k1", "m", 1, 1);
    refused.status = 429;
    for e in [
        event(DAY1, "k1", "m", 1, 1),
        event(DAY1 + 1, "k1", "m", 1, 1),
        event(DAY1 + 2, "k2", "m", 1, 1),
        refused,
        event(DAY1 + 3, "k1", "m", 1, 1),
        event(DAY1 + h, "k1", "m", 1, 1),
        event(DAY1 + DAY_MS, "k1", "m", 1, 1),
        event(DAY1 + 4, "k1", "m", 1, 1),
    ] {
        r.add(&e, DAY1);
    }
    let mut cells: Vec<(String, u64, String, String, i64)> = r
        .take(1_000, DAY1, true)
        .into_iter()
        .flat_map(|b| {
            b.cells.into_iter().map(move |c| {
                (
                    b.day.clone(),
                    c.hour_ms,
                    c.dims.key,
                    c.dims.status,
                    c.counters.requests,
                )
            })
        })
        .collect();
    cells.sort();
    let row = |day: &str, hour: u64, key: &str, status: &str, n: i64| {
        (day.to_owned(), hour, key.to_owned(), status.to_owned(), n)
    };
    assert_eq!(
        cells,
        [
            row("2025-11-27", DAY1, "k1", "2xx", 4),
            row("2025-11-27", DAY1, "k1", "429", 1),
            row("2025-11-27", DAY1, "k2", "2xx", 1),
            row("2025-11-27", DAY1 + h, "k1", "2xx", 1),
            row("2025-11-28", DAY1 + DAY_MS, "k1", "2xx", 1),
        ]
    );
}

#[test]
fn requests_on_two_days_go_to_two_day_objects() {
    let mut r = Rollups::new("iso".into());
    r.add(&event(DAY1 + DAY_MS - 1, "k", "m", 1, 1), DAY1);
    r.add(&event(DAY1 + DAY_MS, "k", "m", 1, 1), DAY1);
    let days: Vec<String> = r
        .take(1_000, DAY1, true)
        .into_iter()
        .map(|b| b.day)
        .collect();
    assert_eq!(days, ["2025-11-27", "2025-11-28"]);
    let q = Query::parse(
        [("from", "2025-11-27"), ("to", "2025-11-28")].into_iter(),
        0,
    )
    .unwrap();
    assert_eq!(q.days(), ["2025-11-27", "2025-11-28"]);
}

#[test]
fn totals_equal_the_sum_of_groups_and_of_series() {
    let mut store = DayStore::default();
    let mut r = Rollups::new("iso".into());
    for i in 0..50u64 {
        let key = ["a", "b", "c"][(i % 3) as usize];
        let model = ["m1", "m2"][(i % 2) as usize];
        let mut e = event(DAY1 + i * 600_000, key, model, 1_000 + i, 10 + i);
        e.error = i % 7 == 0;
        e.attempts = 1 + u32::from(i % 5 == 0);
        r.add(&e, DAY1);
    }
    for b in r.take(1_000, DAY1, true) {
        store.ingest(&b);
    }
    let whole = answer(&query(&[]), &[store.query(&query(&[]))]);
    assert_eq!(whole.totals.requests, 50);
    assert_eq!(
        whole.totals.cost_pico,
        (0..50).map(|i| 1_000 + i).sum::<i64>()
    );
    assert_eq!(whole.totals.failovers, 10);
    assert_eq!(whole.totals.errors, 8);
    for by in ["key", "model", "provider", "location", "status"] {
        let q = query(&[("group_by", by), ("interval", "hour")]);
        let a = answer(&q, &[store.query(&q)]);
        assert_eq!(a.totals, whole.totals, "{by}");
        let sum: i64 = a.groups.iter().map(|g| g.figures.cost_pico).sum();
        assert_eq!(sum, whole.totals.cost_pico, "{by}");
        let sum: i64 = a.series.iter().map(|p| p.figures.requests).sum();
        assert_eq!(sum, 50, "{by}");
    }
    let q = query(&[("interval", "minute")]);
    let a = answer(&q, &[store.query(&q)]);
    assert_eq!(a.series.len(), 50);
    assert_eq!(a.totals.cost_pico, whole.totals.cost_pico);
}

#[test]
fn filters_and_periods_select_cells() {
    let mut store = DayStore::default();
    let mut r = Rollups::new("iso".into());
    r.add(&event(DAY1 + HOUR_MS, "a", "m1", 5, 1), DAY1);
    r.add(&event(DAY1 + 3 * HOUR_MS, "b", "m1", 7, 1), DAY1);
    r.add(&event(DAY1 + 3 * HOUR_MS, "a", "m2", 11, 1), DAY1);
    for b in r.take(1_000, DAY1, true) {
        store.ingest(&b);
    }
    let run = |pairs: &[(&str, &str)]| {
        let q = query(pairs);
        answer(&q, &[store.query(&q)]).totals.cost_pico
    };
    assert_eq!(run(&[("key", "a")]), 16);
    assert_eq!(run(&[("key", "a"), ("model", "m1")]), 5);
    let from = (DAY1 + 2 * HOUR_MS).to_string();
    assert_eq!(run(&[("from", &from)]), 18);
    let to = (DAY1 + 2 * HOUR_MS).to_string();
    assert_eq!(run(&[("to", &to)]), 5);
}

#[test]
fn percentiles_merge_across_days_and_isolates() {
    let mut day1 = DayStore::default();
    let mut day2 = DayStore::default();
    for (n, store) in [(0u64, &mut day1), (1, &mut day2)] {
        for holder in ["i1", "i2"] {
            let mut r = Rollups::new(holder.into());
            for v in 1..=50 {
                r.add(&event(DAY1 + n * DAY_MS, "k", "m", 0, v + n * 50), DAY1);
            }
            for b in r.take(1_000, DAY1, true) {
                store.ingest(&b);
            }
        }
    }
    let q = Query::parse(
        [("from", "2025-11-27"), ("to", "2025-11-28")].into_iter(),
        0,
    )
    .unwrap();
    let a = answer(&q, &[day1.query(&q), day2.query(&q)]);
    assert_eq!(a.totals.requests, 200);
    assert_eq!(a.totals.latency_ms.p50, Some(50));
    let p95 = a.totals.latency_ms.p95.unwrap();
    assert!(p95.abs_diff(95) * 16 <= 95, "{p95}");
}

#[test]
fn the_store_round_trips_through_its_rows() {
    let mut store = DayStore::default();
    let mut r = Rollups::new("iso".into());
    r.add(&event(DAY1 + 42, "k", "m", 9, 30), DAY1);
    let batch = r.take(1_000, DAY1, true).remove(0);
    store.ingest(&batch);
    let rows = store.take_changes();
    assert_eq!(rows.len(), 3, "a cell, a minute, a holder: {rows:?}");
    let loaded =
        DayStore::load(rows.into_iter().map(|(k, key, v)| (k.to_owned(), key, v))).unwrap();
    assert_eq!(loaded.query(&query(&[])), store.query(&query(&[])));
    let mut loaded = loaded;
    assert!(!loaded.ingest(&batch), "holders survive a reload");
    assert!(store.take_changes().is_empty());
}

#[test]
fn bad_queries_name_their_parameter() {
    let err = |pairs: &[(&str, &str)]| Query::parse(pairs.iter().copied(), DAY1).unwrap_err().param;
    assert_eq!(err(&[("group_by", "colour")]), "group_by");
    assert_eq!(err(&[("from", "yesterday")]), "from");
    assert_eq!(err(&[("from", "2025-11-27"), ("to", "2025-11-26")]), "to");
    assert_eq!(err(&[("from", "2025-01-01"), ("to", "2025-11-26")]), "to");
    assert_eq!(
        err(&[("interval", "minute"), ("group_by", "key")]),
        "interval"
    );
    assert_eq!(err(&[("colour", "red")]), "query");
    let q = query(&[("metric", "cost_pico")]);
    assert_eq!(
        (q.from_ms, q.to_ms),
        (DAY1, DAY1 + DAY_MS),
        "today by default"
    );
}

#[test]
fn status_classes_group_rate_limits_apart() {
    assert_eq!(status_class(200), "2xx");
    assert_eq!(status_class(429), "429");
    assert_eq!(status_class(400), "4xx");
    assert_eq!(status_class(503), "5xx");
}

#[test]
fn metrics_select_the_figures_answered() {
    let q = query(&[("metric", "cost_usd,requests"), ("group_by", "key")]);
    assert_eq!(q.metrics, ["cost_usd", "requests"]);
    let mut store = DayStore::default();
    let mut r = Rollups::new("iso".into());
    r.add(&event(DAY1, "k", "m", 3, 1), DAY1);
    for b in r.take(1_000, DAY1, true) {
        store.ingest(&b);
    }
    let v = answer(&q, &[store.query(&q)]).to_json(&q.metrics);
    let keys = |x: &serde_json::Value| {
        let mut k: Vec<String> = x.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v["totals"]), ["cost_usd", "requests"]);
    assert_eq!(keys(&v["groups"][0]), ["cost_usd", "group", "requests"]);
    let err = Query::parse([("metric", "vibes")].into_iter(), DAY1).unwrap_err();
    assert_eq!(err.param, "metric");
}
