//! Client commands: each is one or two calls to a running node's local API. Human output by
//! default, the API's own JSON with `--json`. Errors carry the API's message and a hint.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{Command, ConflictAction, Target};

struct Client {
    base: String,
    token: String,
    json: bool,
    agent: ureq::Agent,
}

fn token_for(target: &Target) -> Result<String> {
    if let Some(token) = &target.token {
        return Ok(token.clone());
    }
    let dir: PathBuf = target.data_dir.clone().unwrap_or_else(meshsync_node::config::default_data_dir);
    let path = dir.join("api-token");
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).with_context(|| {
        format!(
            "cannot read the API token at {}; pass --data-dir of the running node, or --token / MESHSYNC_TOKEN",
            path.display()
        )
    })
}

/// Percent-encodes one path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Parses FIELD=VALUE; VALUE as JSON when it parses, else as a string.
fn parse_pair(pair: &str) -> Result<(String, Value)> {
    let (field, value) = pair.split_once('=').ok_or_else(|| anyhow!("expected FIELD=VALUE, got {pair:?}"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((field.to_string(), value))
}

fn object(pairs: &[String]) -> Result<Value> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = parse_pair(pair)?;
        map.insert(k, v);
    }
    Ok(Value::Object(map))
}

impl Client {
    fn new(target: &Target, timeout: Option<Duration>) -> Result<Client> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout).build().into();
        Ok(Client {
            base: target.api.trim_end_matches('/').to_string(),
            token: token_for(target)?,
            json: target.json,
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("PUT", Some(body)) => self.agent.put(&url).header("Authorization", &auth).send_json(&body),
            ("POST", body) => self.agent.post(&url).header("Authorization", &auth).send_json(body.unwrap_or(json!({}))),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut response = response.map_err(|e| {
            anyhow!("cannot reach the node at {}: {e}; is `meshsync run` running? (--api sets the URL)", self.base)
        })?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            let code = value.pointer("/error/code").and_then(Value::as_str).unwrap_or("error");
            bail!("{message} ({code}, HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            human(value);
        }
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_record(record: &Value) {
    let collection = record["collection"].as_str().unwrap_or("");
    let id = record["id"].as_str().unwrap_or("");
    println!("{collection}/{id}");
    if let Some(fields) = record["fields"].as_object() {
        let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
        for (name, value) in fields {
            println!("  {name:width$}  {}", compact(value));
        }
    }
    let scope = record["scope"].as_str().map(|s| format!("  scope {s}")).unwrap_or_default();
    let conflicts = record["conflicts"].as_u64().unwrap_or(0);
    let conflicts =
        if conflicts > 0 { format!("  {conflicts} conflict(s): meshsync conflicts") } else { String::new() };
    println!("  (updated {}{scope}{conflicts})", record["updated_at"].as_str().unwrap_or("?"));
}

pub(crate) fn dispatch(command: Command) -> Result<()> {
    let quick = Some(Duration::from_secs(30));
    match command {
        Command::Run(_) | Command::Demo { .. } | Command::Rendezvous(_) => unreachable!("handled in main"),
        Command::Status { target } => {
            let c = Client::new(&target, quick)?;
            let s = c.call("GET", "/v1/status", None)?;
            c.print(&s, |s| {
                println!("device   {}", s["device_id"].as_str().unwrap_or("?"));
                println!("name     {}", s["name"].as_str().unwrap_or("?"));
                println!("group    {}", s["group_id"].as_str().unwrap_or("(none)"));
                println!("version  {}", s["version"].as_str().unwrap_or("?"));
                println!("records  {}", s["records"]);
                println!("peers    {} connected, {} known", s["peers"]["connected"], s["peers"]["known"]);
                if s["paused"].as_bool() == Some(true) {
                    println!("sync     paused (meshsync resumes with POST /v1/sync/resume)");
                }
            });
        }
        Command::Put { collection, id, fields, target } => {
            let c = Client::new(&target, quick)?;
            let r =
                c.call("PUT", &format!("/v1/c/{}/{}", segment(&collection), segment(&id)), Some(object(&fields)?))?;
            c.print(&r, print_record);
        }
        Command::Append { collection, fields, target } => {
            let c = Client::new(&target, quick)?;
            let r = c.call("POST", &format!("/v1/c/{}", segment(&collection)), Some(object(&fields)?))?;
            c.print(&r, print_record);
        }
        Command::Get { collection, id, target } => {
            let c = Client::new(&target, quick)?;
            let r = c.call("GET", &format!("/v1/c/{}/{}", segment(&collection), segment(&id)), None)?;
            c.print(&r, print_record);
        }
        Command::List { collection, filters, limit, cursor, target } => {
            let c = Client::new(&target, quick)?;
            let mut query = Vec::new();
            for filter in &filters {
                let (field, value) =
                    filter.split_once('=').ok_or_else(|| anyhow!("--where takes FIELD=VALUE, got {filter:?}"))?;
                query.push(format!("where.{}={}", segment(field), segment(value)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            if let Some(cursor) = cursor {
                query.push(format!("cursor={}", segment(&cursor)));
            }
            let path = format!("/v1/c/{}?{}", segment(&collection), query.join("&"));
            let page = c.call("GET", &path, None)?;
            c.print(&page, |page| {
                let records = page["records"].as_array().cloned().unwrap_or_default();
                let width = records.iter().filter_map(|r| r["id"].as_str()).map(str::len).max().unwrap_or(2).max(2);
                println!("{:width$}  fields", "id");
                for r in &records {
                    println!("{:width$}  {}", r["id"].as_str().unwrap_or(""), r["fields"]);
                }
                match page["next"].as_str() {
                    Some(next) => println!("({} shown; more with --cursor {next})", records.len()),
                    None => println!("({} record(s))", records.len()),
                }
            });
        }
        Command::Incr { collection, id, field, by, target } => {
            let c = Client::new(&target, quick)?;
            let by: Value =
                serde_json::from_str(&by).map_err(|_| anyhow!("the amount must be a number, got {by:?}"))?;
            let r = c.call(
                "POST",
                &format!("/v1/c/{}/{}/incr", segment(&collection), segment(&id)),
                Some(json!({"field": field, "by": by})),
            )?;
            c.print(&r, print_record);
        }
        Command::Delete { collection, id, target } => {
            let c = Client::new(&target, quick)?;
            let r = c.call("DELETE", &format!("/v1/c/{}/{}", segment(&collection), segment(&id)), None)?;
            c.print(&r, |_| println!("deleted {collection}/{id}"));
        }
        Command::Schema { collection, fields, default, append_only, target } => {
            let c = Client::new(&target, quick)?;
            let path = format!("/v1/schema/{}", segment(&collection));
            let schema = if fields.is_empty() && default.is_none() && !append_only {
                c.call("GET", &path, None)?
            } else {
                let mut map = serde_json::Map::new();
                for pair in &fields {
                    let (field, policy) =
                        pair.split_once('=').ok_or_else(|| anyhow!("expected FIELD=POLICY, got {pair:?}"))?;
                    map.insert(field.to_string(), Value::String(policy.to_string()));
                }
                let body = json!({"fields": map, "default": default.unwrap_or_else(|| "lww".into()), "append_only": append_only});
                c.call("PUT", &path, Some(body))?
            };
            c.print(&schema, |s| {
                println!(
                    "{collection}: default {}{}",
                    compact(&s["default"]),
                    if s["append_only"] == true { ", append-only" } else { "" }
                );
                if let Some(fields) = s["fields"].as_object() {
                    for (field, policy) in fields {
                        println!("  {field}: {}", compact(policy));
                    }
                }
            });
        }
        Command::Watch { cursor, collection, target } => watch(&target, cursor, collection)?,
        Command::Conflicts { action, target } => {
            let c = Client::new(&target, quick)?;
            match action {
                Some(ConflictAction::Resolve { id, value }) => {
                    let body = match value {
                        Some(v) => json!({"value": serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v))}),
                        None => json!({}),
                    };
                    let r = c.call("POST", &format!("/v1/conflicts/{}/resolve", segment(&id)), Some(body))?;
                    c.print(&r, |r| {
                        println!("resolved; the record is now:");
                        print_record(r.get("record").unwrap_or(r));
                    });
                }
                None => {
                    let list = c.call("GET", "/v1/conflicts", None)?;
                    c.print(&list, |list| {
                        let conflicts = list["conflicts"].as_array().cloned().unwrap_or_default();
                        if conflicts.is_empty() {
                            println!("no conflicts");
                        }
                        for x in conflicts {
                            println!(
                                "{}  {}/{}.{}",
                                x["id"].as_str().unwrap_or(""),
                                compact(&x["collection"]),
                                compact(&x["record"]),
                                compact(&x["field"])
                            );
                            for side in ["kept", "lost"] {
                                let s = &x[side];
                                println!(
                                    "    {side}  {}  by {} at {}",
                                    s["value"],
                                    compact(&s["device"]),
                                    compact(&s["at"])
                                );
                            }
                        }
                    });
                }
            }
        }
        Command::Peers { target } => {
            let c = Client::new(&target, quick)?;
            let peers = c.call("GET", "/v1/peers", None)?;
            c.print(&peers, |p| {
                let peers = p["peers"].as_array().cloned().unwrap_or_default();
                if peers.is_empty() {
                    println!("no peers known yet");
                }
                for peer in peers {
                    let addrs: Vec<String> = peer["addrs"].as_array().into_iter().flatten().map(compact).collect();
                    let sources: Vec<String> = peer["sources"].as_array().into_iter().flatten().map(compact).collect();
                    println!(
                        "{}  {}  {}  {}  via {}",
                        peer["device_id"].as_str().unwrap_or("(unknown device)"),
                        peer["name"].as_str().unwrap_or("-"),
                        compact(&peer["state"]),
                        if addrs.is_empty() { "(no address yet)".to_string() } else { addrs.join(",") },
                        sources.join(","),
                    );
                    if peer["state"] != "connected" {
                        if let Some(error) = peer["last_error"].as_str() {
                            println!("    last error: {error}");
                        }
                        for tried in peer["last_dial"]["tried"].as_array().into_iter().flatten() {
                            println!(
                                "    tried {} at {}: {}",
                                compact(&tried["addr"]),
                                compact(&peer["last_dial"]["at"]),
                                tried["error"].as_str().unwrap_or("answered")
                            );
                        }
                    }
                }
            });
        }
        Command::Members { target } => {
            let c = Client::new(&target, quick)?;
            let members = c.call("GET", "/v1/members", None)?;
            c.print(&members, |m| {
                for member in m["members"].as_array().into_iter().flatten() {
                    let scopes: Vec<String> = member["scopes"].as_array().into_iter().flatten().map(compact).collect();
                    println!(
                        "{}  {}  {}  {}{}",
                        compact(&member["device_id"]),
                        compact(&member["name"]),
                        compact(&member["role"]),
                        if scopes.is_empty() { "all scopes".to_string() } else { scopes.join(",") },
                        if member["revoked"] == true { "  REVOKED" } else { "" }
                    );
                }
            });
        }
        Command::Invite { role, scopes, ttl, uses, no_addrs, png, svg, no_qr, target } => {
            let c = Client::new(&target, quick)?;
            let invite = c.call(
                "POST",
                "/v1/invites",
                Some(json!({"role": role, "scopes": scopes, "ttl_s": ttl, "uses": uses, "addrs": !no_addrs})),
            )?;
            let code = invite["code"].as_str().unwrap_or_default().to_string();
            if let Some(path) = &png {
                std::fs::write(path, crate::qr::png(&code, 6)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = &svg {
                std::fs::write(path, invite["qr_svg"].as_str().unwrap_or_default())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let drawing = if no_qr { None } else { Some(crate::qr::terminal(&code)?) };
            c.print(&invite, |i| {
                if let Some(drawing) = &drawing {
                    println!("{drawing}");
                }
                println!(
                    "invite code for a {} ({} use{}, valid until {}):\n\n  {}\n",
                    compact(&i["role"]),
                    i["uses"],
                    if i["uses"] == 1 { "" } else { "s" },
                    compact(&i["expires_at"]),
                    code
                );
                println!("on the new device: meshsync run --join {code}");
                for (what, path) in [("PNG", &png), ("SVG", &svg)] {
                    if let Some(path) = path {
                        println!("QR code as {what}: {}", path.display());
                    }
                }
            });
        }
        Command::Audit { limit, kind, before, verify, target } => audit(&target, limit, kind, before, verify)?,
        Command::Revoke { device, target } => {
            let c = Client::new(&target, quick)?;
            let r = c.call("POST", &format!("/v1/members/{}/revoke", segment(&device)), Some(json!({})))?;
            c.print(&r, |_| println!("revoked {device}"));
        }
        Command::Send { kind, data, to, target } => {
            let c = Client::new(&target, quick)?;
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            let r = c.call("POST", "/v1/messages", Some(json!({"to": to, "type": kind, "data": data})))?;
            c.print(&r, |_| println!("sent"));
        }
    }
    Ok(())
}

/// Longest detail shown on one line of `meshsync audit`, in characters.
const AUDIT_DETAIL_CHARS: usize = 100;

/// `meshsync audit`: one line per entry (time, kind, device, detail), then the chain's state
/// with `--verify`; an error (exit 1) when the chain is broken, with `--json` too.
fn audit(target: &Target, limit: u32, kind: Option<String>, before: Option<u64>, verify: bool) -> Result<()> {
    let c = Client::new(target, Some(Duration::from_secs(60)))?;
    let mut query = vec![format!("limit={limit}")];
    if let Some(kind) = &kind {
        query.push(format!("kind={}", segment(kind)));
    }
    if let Some(before) = before {
        query.push(format!("before={before}"));
    }
    if verify {
        query.push("verify=true".into());
    }
    let page = c.call("GET", &format!("/v1/audit?{}", query.join("&")), None)?;
    c.print(&page, |page| {
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            println!("no audit entries{}", kind.as_ref().map(|k| format!(" of kind {k}*")).unwrap_or_default());
        }
        let width = entries.iter().filter_map(|e| e["kind"].as_str()).map(str::len).max().unwrap_or(0);
        for entry in &entries {
            let device = entry["device"].as_str().map(|d| d.split('-').next().unwrap_or(d)).unwrap_or("-");
            let detail = compact(&entry["detail"]);
            let detail = if detail.chars().count() > AUDIT_DETAIL_CHARS {
                format!("{}…", detail.chars().take(AUDIT_DETAIL_CHARS - 1).collect::<String>())
            } else {
                detail
            };
            println!(
                "{:>6}  {}  {:width$}  {:9}  {detail}",
                entry["seq"].as_u64().unwrap_or(0),
                entry["at"].as_str().unwrap_or("?"),
                entry["kind"].as_str().unwrap_or("?"),
                device,
            );
        }
        if let Some(next) = page["next"].as_u64() {
            println!("(older entries: meshsync audit --before {next})");
        }
        let chain = &page["chain"];
        if chain["ok"] == true {
            let head = chain["head"].as_str().unwrap_or("");
            println!("chain ok: {} entries, head {head}", chain["entries"]);
        } else if chain["ok"] == false {
            println!(
                "chain BROKEN at entry {}: {} ({} entries before it verified)",
                chain["broken_at"],
                chain["reason"].as_str().unwrap_or("?"),
                chain["entries"]
            );
        }
    });
    if page["chain"]["ok"] == false {
        bail!("the audit log's hash chain is broken at entry {}", page["chain"]["broken_at"]);
    }
    Ok(())
}

/// Follows the server-sent event stream, printing one line per event; resumes after a dropped
/// connection from the last cursor it printed.
fn watch(target: &Target, cursor: Option<u64>, collection: Option<String>) -> Result<()> {
    let client = Client::new(target, None)?;
    let mut cursor = cursor;
    loop {
        let mut query = Vec::new();
        if let Some(c) = cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(coll) = &collection {
            query.push(format!("collection={}", segment(coll)));
        }
        let url = format!("{}/v1/events?{}", client.base, query.join("&"));
        let response = client
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", client.token))
            .header("Accept", "text/event-stream")
            .call();
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => bail!("the node refused the event stream (HTTP {})", r.status().as_u16()),
            Err(e) => {
                eprintln!("connection lost ({e}); retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else { continue };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else { continue };
            if let Some(c) = event["cursor"].as_u64() {
                cursor = Some(c);
            }
            if client.json {
                println!("{event}");
            } else {
                let kind = event["type"].as_str().unwrap_or("event");
                let what = match kind {
                    "record.changed" => format!(
                        "{}/{}{}{}",
                        compact(&event["collection"]),
                        compact(&event["id"]),
                        if event["deleted"] == true { " deleted" } else { "" },
                        if event["local"] == true { " (local)" } else { "" }
                    ),
                    "conflict.detected" => format!(
                        "{}/{}.{} id {}",
                        compact(&event["collection"]),
                        compact(&event["record"]),
                        compact(&event["field"]),
                        compact(&event["id"])
                    ),
                    "peer.connected" => format!(
                        "{} ({}) at {}",
                        compact(&event["name"]),
                        compact(&event["device_id"]),
                        compact(&event["addr"])
                    ),
                    "peer.disconnected" => format!("{}: {}", compact(&event["device_id"]), compact(&event["reason"])),
                    "sync.progress" => format!(
                        "from {}: {} received, about {} to go{}",
                        compact(&event["device_id"]),
                        event["received"],
                        event["remaining"],
                        if event["caught_up"] == true { " (caught up)" } else { "" }
                    ),
                    "message" => {
                        let m = &event["message"];
                        format!("{} from {}: {}", compact(&m["type"]), compact(&m["from"]), m["data"])
                    }
                    _ => event.to_string(),
                };
                println!("{kind:18} {what}");
            }
        }
        eprintln!("event stream ended; reconnecting from cursor {}", cursor.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
}
