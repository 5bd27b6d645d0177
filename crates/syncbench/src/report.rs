//! The machine description and the markdown tables.

use serde_json::{json, Value};

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// nproc, CPU model, memory, kernel, date.
pub fn machine() -> Value {
    let lscpu = sh("lscpu", &[]);
    let model =
        lscpu.lines().find_map(|l| l.strip_prefix("Model name:")).map(|m| m.trim().to_string()).unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            })?
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "mem_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": sh("uname", &["-r"]),
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    })
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn mib(kib: &Value) -> String {
    kib.as_f64().map(|k| format!("{:.0}", k / 1024.0)).unwrap_or_else(|| "–".into())
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn us(v: &Value) -> String {
    v.as_f64()
        .map(|u| if u >= 1000.0 { format!("{:.2} ms", u / 1000.0) } else { format!("{u:.0} µs") })
        .unwrap_or("–".into())
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// Every result as markdown.
pub fn markdown(results: &[Value]) -> String {
    let mut out = String::new();
    let mut targets: Vec<String> = Vec::new();
    if let Some(m) = results.iter().find(|r| r["scenario"] == "machine") {
        let m = &m["machine"];
        out += &format!(
            "Machine: {} cores (nproc), {}, {} GiB RAM, Linux {}; measured {}.\n\n",
            m["nproc"],
            m["cpu"].as_str().unwrap_or("?"),
            m["mem_gib"],
            m["kernel"].as_str().unwrap_or("?"),
            m["date"].as_str().unwrap_or("?")
        );
        let loads: Vec<f64> = results.iter().filter_map(|r| r["load1_after"].as_f64()).collect();
        if !loads.is_empty() {
            let (lo, hi) = loads.iter().fold((f64::MAX, 0.0f64), |(lo, hi), l| (lo.min(*l), hi.max(*l)));
            out += &format!(
                "1-minute load average after each scenario: {lo:.1} to {hi:.1} (on {} cores; above ~1 means other work shared the machine, so read times as upper bounds).\n\n",
                m["nproc"]
            );
        }
    }
    let initial: Vec<&Value> = results.iter().filter(|r| r["scenario"] == "initial").collect();
    let mut sizes: Vec<u64> = initial.iter().filter_map(|r| r["n"].as_u64()).collect();
    sizes.sort();
    sizes.dedup();
    if !sizes.is_empty() {
        let find = |engine: &str, n: u64| initial.iter().find(|r| r["engine"] == engine && r["n"] == n).copied();
        let time = |engine: &str, n: u64| find(engine, n).and_then(|r| f(&r["sync_s"]));
        let cell = |engine: &str, n: u64| match find(engine, n) {
            Some(r) if r.get("failed").is_some() => {
                r["failed"].as_str().unwrap_or("failed").replace("did not finish", "DNF")
            }
            Some(r) => f(&r["sync_s"]).map(secs).unwrap_or("–".into()),
            None => "–".into(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "–".into(),
        };
        out += "### Initial sync of N records, process A to an empty process B on loopback\n\n";
        out += &format!(
            "| | {} |\n|---|{}\n",
            sizes.iter().map(|n| size(*n)).collect::<Vec<_>>().join(" | "),
            "---|".repeat(sizes.len())
        );
        let mut row = |label: &str, cells: Vec<String>| out += &format!("| {label} | {} |\n", cells.join(" | "));
        row(
            "meshsync, mutual TLS 1.3 (start_mesh at B → all N durable at B)",
            sizes.iter().map(|n| cell("meshsync", *n)).collect(),
        );
        row(
            "raw SQLite bound: N rows, one transaction (rusqlite, WAL, synchronous=NORMAL)",
            sizes.iter().map(|n| cell("sqlite", *n)).collect(),
        );
        row("meshsync ÷ SQLite bound", sizes.iter().map(|n| ratio(time("meshsync", *n), time("sqlite", *n))).collect());
        row(
            "meshsync records/s",
            sizes
                .iter()
                .map(|n| time("meshsync", *n).map(|t| format!("{:.0}k", *n as f64 / t / 1000.0)).unwrap_or("–".into()))
                .collect(),
        );
        row(
            "meshsync: TLS link up / first batch applied / caught-up flag",
            sizes
                .iter()
                .map(|n| {
                    find("meshsync", *n)
                        .map(|r| {
                            format!(
                                "{} / {} / {}",
                                f(&r["connect_s"]).map(secs).unwrap_or("–".into()),
                                f(&r["first_batch_s"]).map(secs).unwrap_or("–".into()),
                                f(&r["caught_up_s"]).map(secs).unwrap_or("–".into())
                            )
                        })
                        .unwrap_or("–".into())
                })
                .collect(),
        );
        row(
            "meshsync peak RSS, MiB: B (receiver) / A (sender, during sync)",
            sizes
                .iter()
                .map(|n| {
                    find("meshsync", *n)
                        .map(|r| format!("{} / {}", mib(&r["b_hwm_kib"]), mib(&r["a_hwm_kib"])))
                        .unwrap_or("–".into())
                })
                .collect(),
        );
        row(
            "meshsync CPU time, s: B / A",
            sizes
                .iter()
                .map(|n| {
                    find("meshsync", *n)
                        .map(|r| {
                            format!(
                                "{:.2} / {:.2}",
                                f(&r["b_cpu_s"]).unwrap_or(f64::NAN),
                                f(&r["a_cpu_s"]).unwrap_or(f64::NAN)
                            )
                        })
                        .unwrap_or("–".into())
                })
                .collect(),
        );
        row(
            "meshsync A: load by write_batch of 1,000 (not in the sync time)",
            sizes
                .iter()
                .map(|n| find("meshsync", *n).and_then(|r| f(&r["a_load_s"])).map(secs).unwrap_or("–".into()))
                .collect(),
        );
        for (engine, label) in [
            ("yrs", "yrs 0.28: state vector → full v1 update → apply, plain TCP"),
            ("automerge", "automerge 0.12: sync protocol in lockstep rounds, plain TCP"),
        ] {
            if initial.iter().any(|r| r["engine"] == engine) {
                row(label, sizes.iter().map(|n| cell(engine, *n)).collect());
                row(
                    &format!("{engine} ÷ meshsync"),
                    sizes.iter().map(|n| ratio(time(engine, *n), time("meshsync", *n))).collect(),
                );
                row(
                    &format!("{engine} peak RSS, MiB: B / A (A: during sync)"),
                    sizes
                        .iter()
                        .map(|n| {
                            find(engine, *n)
                                .map(|r| {
                                    if r.get("failed").is_some() {
                                        format!("{} (seen) / {}", mib(&r["b_rss_seen_kib"]), mib(&r["a_hwm_kib"]))
                                    } else {
                                        format!("{} / {}", mib(&r["b_hwm_kib"]), mib(&r["a_hwm_kib"]))
                                    }
                                })
                                .unwrap_or("–".into())
                        })
                        .collect(),
                );
            }
        }
        out += "\n";
        if let Some(t) = time("meshsync", 1_000_000) {
            targets.push(format!("initial sync of 1M under 10 s: {} ({})", mark(t < 10.0), secs(t)));
            if let Some(s) = time("sqlite", 1_000_000) {
                targets.push(format!(
                    "initial sync within 1.5x of the SQLite bound (ANCHORS aim): {} ({:.2}x)",
                    mark(t / s <= 1.5),
                    t / s
                ));
            }
        }
    }
    let latency: Vec<&Value> = results.iter().filter(|r| r["scenario"] == "latency").collect();
    if !latency.is_empty() {
        out += "### Live propagation: one `put` at A → `RecordChanged` at the other node(s)\n\n";
        out += "Time from `put` returning at A (durable) to the event at the receiver; writes spaced ~2 ms, after 50 warm-up writes.\n\n";
        out += "| path | writes | p50 | p99 | max | this hop alone p50 / p99 |\n|---|---|---|---|---|---|\n";
        let mut worst_hop_p99: f64 = 0.0;
        for l in &latency {
            let mode = l["mode"].as_str().unwrap_or("?");
            if let Some(failed) = l.get("failed") {
                out += &format!("| {mode} | failed: {} | | | | |\n", failed.as_str().unwrap_or("?"));
                continue;
            }
            let r = &l["result"];
            for rec in r["receivers"].as_array().into_iter().flatten() {
                let hops = rec["hops"].as_u64().unwrap_or(0);
                let path = if mode == "hop" {
                    "A → B, one hop, direct".to_string()
                } else {
                    format!(
                        "line A→{}: {} hop{} (forwarded)",
                        ["B", "C", "D", "E"].get(hops as usize - 1).unwrap_or(&"?"),
                        hops,
                        if hops > 1 { "s" } else { "" }
                    )
                };
                worst_hop_p99 = worst_hop_p99.max(rec["hop_p99_us"].as_f64().unwrap_or(0.0));
                let missing = rec["missing"].as_u64().unwrap_or(0);
                out += &format!(
                    "| {path} | {}{} | {} | {} | {} | {} / {} |\n",
                    r["writes"],
                    if missing > 0 { format!(" ({missing} missing)") } else { String::new() },
                    us(&rec["p50_us"]),
                    us(&rec["p99_us"]),
                    us(&rec["max_us"]),
                    us(&rec["hop_p50_us"]),
                    us(&rec["hop_p99_us"])
                );
            }
            out += &format!(
                "| ({mode}) the `put` itself at A | | {} | {} | | |\n",
                us(&r["put_p50_us"]),
                us(&r["put_p99_us"])
            );
            if mode == "line" {
                out += &format!(
                    "| (line) links per node before / after | {} / {} | | | | |\n",
                    r["links_before"], r["links_after"]
                );
            }
        }
        out += "\n";
        if worst_hop_p99 > 0.0 {
            targets.push(format!(
                "live propagation p99 under 5 ms per hop: {} (worst hop p99 {})",
                mark(worst_hop_p99 < 5000.0),
                us(&json!(worst_hop_p99))
            ));
            targets.push(format!(
                "one write reaching a peer under 1 ms p99 (ANCHORS aim): {}",
                mark(worst_hop_p99 < 1000.0)
            ));
        }
    }
    if let Some(c) = results.iter().find(|r| r["scenario"] == "catchup") {
        out += "### Catch-up after a pause (A and B connected, B paused while A writes, then resumed)\n\n";
        if let Some(failed) = c.get("failed") {
            out += &format!("failed: {}\n\n", failed.as_str().unwrap_or("?"));
        } else {
            out += "| changes at A while B is paused | written at A in | B has them all after resuming in | changes/s |\n|---|---|---|---|\n";
            for p in c["result"]["phases"].as_array().into_iter().flatten() {
                let (n, t) = (p["n"].as_f64().unwrap_or(0.0), f(&p["catchup_s"]).unwrap_or(f64::NAN));
                let what =
                    if p["phase"] == "insert" { "new records" } else { "updates of existing records (one field)" };
                out += &format!(
                    "| {} {what} | {} | {} | {:.0}k |\n",
                    size(n as u64),
                    f(&p["write_s"]).map(secs).unwrap_or("–".into()),
                    secs(t),
                    n / t / 1000.0
                );
                targets.push(format!(
                    "catch-up of {} {what} under 2 s: {} ({})",
                    size(n as u64),
                    mark(t < 2.0),
                    secs(t)
                ));
            }
            out += "\n";
        }
    }
    if let Some(i) = results.iter().find(|r| r["scenario"] == "idle") {
        out += "### Idle node: `meshsync run` with one connected peer (both real processes)\n\n";
        if let Some(failed) = i.get("failed") {
            out += &format!("failed: {}\n\n", failed.as_str().unwrap_or("?"));
        } else {
            let r = &i["result"];
            out += &format!(
                "Window {:.0} s; still connected at the end: {}.\n\n",
                f(&r["window_s"]).unwrap_or(0.0),
                r["still_connected"]
            );
            out += "| process | RSS at end | max RSS in window | peak RSS (VmHWM) | CPU |\n|---|---|---|---|---|\n";
            for p in r["processes"].as_array().into_iter().flatten() {
                let rss_mb = p["rss_max_kib"].as_f64().unwrap_or(0.0) * 1024.0 / 1e6;
                let cpu = f(&p["cpu_pct"]).unwrap_or(f64::NAN);
                out += &format!(
                    "| {} | {} MiB | {} MiB ({rss_mb:.1} MB) | {} MiB | {cpu:.2} % ({:.2} s) |\n",
                    p["process"].as_str().unwrap_or("?"),
                    mib(&p["rss_kib"]),
                    mib(&p["rss_max_kib"]),
                    mib(&p["hwm_kib"]),
                    f(&p["cpu_s"]).unwrap_or(f64::NAN)
                );
                targets.push(format!(
                    "idle RSS under 25 MB ({}): {} ({rss_mb:.1} MB)",
                    p["process"].as_str().unwrap_or("?"),
                    mark(rss_mb < 25.0)
                ));
                targets.push(format!(
                    "idle CPU under 1% ({}): {} ({cpu:.2} %)",
                    p["process"].as_str().unwrap_or("?"),
                    mark(cpu < 1.0)
                ));
            }
            out += "\n";
        }
    }
    if !targets.is_empty() {
        out += "### Targets\n\n";
        for t in targets {
            out += &format!("- {t}\n");
        }
    }
    out
}
