//! Scenario 4: the real `meshsync run` binary, two processes joined by invite on loopback (no
//! mDNS), idle for a while: resident set (`VmRSS`, sampled every second) and CPU (utime + stime
//! from `/proc/PID/stat` over the window) of each.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::child::Child;
use crate::{procfs, Error};

fn api_url(child: &mut Child) -> Result<String, Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(line) = child.next_line(Duration::from_secs(1)) else { continue };
        if line.trim_start().starts_with("API") {
            if let Some(at) = line.find("http://") {
                let url = &line[at..];
                let url = url.split_whitespace().next().unwrap_or(url);
                return Ok(url.trim_end_matches("/v1").to_string());
            }
        }
    }
    Err("`meshsync run` did not print its API address within 30 s".into())
}

fn cli(meshsync: &str, args: &[&str]) -> Result<Value, Error> {
    let out = std::process::Command::new(meshsync).args(args).output()?;
    if !out.status.success() {
        return Err(format!("meshsync {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn any_connected(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.get("state").and_then(Value::as_str) == Some("connected") || map.values().any(any_connected)
        }
        Value::Array(list) => list.iter().any(any_connected),
        _ => false,
    }
}

fn run_args(dir: &std::path::Path, name: &str) -> Vec<String> {
    [
        "run",
        "--data-dir",
        &dir.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--no-mdns",
        "--no-beacon",
    ]
    .into_iter()
    .map(String::from)
    .chain(["--name".to_string(), name.to_string(), "--log".to_string(), "warn".to_string()])
    .collect()
}

pub fn idle(meshsync: &str, secs: u64) -> Result<Value, Error> {
    let base = tempfile::Builder::new().prefix("syncbench-idle-").tempdir()?;
    let (d1, d2) = (base.path().join("one"), base.path().join("two"));
    let limit = Duration::from_secs(secs + 300);
    let mut one = Child::spawn(meshsync, &run_args(&d1, "idle-one"), limit, None).map_err(|e| e.to_string())?;
    let url1 = api_url(&mut one)?;
    let d1s = d1.display().to_string();
    let invite = cli(meshsync, &["invite", "--api", &url1, "--data-dir", &d1s, "--json"])?;
    let code = invite["code"].as_str().ok_or("no code in the invite")?.to_string();
    let mut args = run_args(&d2, "idle-two");
    args.extend(["--join".to_string(), code]);
    let mut two = Child::spawn(meshsync, &args, limit, None).map_err(|e| e.to_string())?;
    let _url2 = api_url(&mut two)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peers = cli(meshsync, &["peers", "--api", &url1, "--data-dir", &d1s, "--json"])?;
        if any_connected(&peers) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the two nodes did not connect within 30 s: {peers}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("      idle: two `meshsync run` processes connected; settling 5 s, then measuring {secs} s");
    std::thread::sleep(Duration::from_secs(5));
    let pids = [one.pid, two.pid];
    let cpu0: Vec<f64> = pids.iter().map(|p| procfs::cpu_s(*p).unwrap_or(f64::NAN)).collect();
    let t0 = Instant::now();
    let mut rss_max = [0u64; 2];
    while t0.elapsed() < Duration::from_secs(secs) {
        for (i, pid) in pids.iter().enumerate() {
            rss_max[i] = rss_max[i].max(procfs::rss_kib(*pid).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let window = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let cpu = procfs::cpu_s(*pid).unwrap_or(f64::NAN) - cpu0[i];
        out.push(json!({
            "process": (["inviter", "joiner"][i]), "rss_kib": procfs::rss_kib(*pid), "rss_max_kib": rss_max[i],
            "hwm_kib": procfs::hwm_kib(*pid), "cpu_s": cpu, "cpu_pct": cpu / window * 100.0,
        }));
    }
    let still = cli(meshsync, &["peers", "--api", &url1, "--data-dir", &d1s, "--json"]).map(|p| any_connected(&p))?;
    one.terminate();
    two.terminate();
    Ok(json!({"window_s": window, "still_connected": still, "processes": out}))
}
