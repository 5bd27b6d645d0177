//! `meshsync demo`: three nodes in this process on loopback, joined by invite, writing shop data
//! at different nodes and converging, with their APIs and dashboards up until Ctrl-C. The
//! newcomer's first look: no setup, under a minute.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use meshsync_node::config::Config;
use meshsync_node::mesh::{InviteOptions, MeshOptions};
use meshsync_node::{Node, NodeOptions, Policy, Schema};
use serde_json::json;

struct DemoNode {
    name: &'static str,
    node: Node,
    url: String,
}

const PRODUCTS: [(&str, &str, f64); 8] = [
    ("tea", "Green tea", 2.5),
    ("coffee", "Coffee beans", 7.9),
    ("cocoa", "Cocoa", 4.2),
    ("honey", "Honey", 6.5),
    ("oats", "Oats", 1.9),
    ("rice", "Rice", 2.2),
    ("salt", "Sea salt", 1.1),
    ("soap", "Olive soap", 3.4),
];

pub(crate) fn demo(keep_dir: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .map_err(|e| anyhow!("{e}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(keep_dir))
}

async fn start(base: &std::path::Path, name: &'static str, join: Option<&str>) -> Result<DemoNode> {
    let dir = base.join(name);
    let node = Node::open_with(&dir, NodeOptions { name: name.to_string(), ..NodeOptions::default() })
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(code) = join {
        node.join(code).map_err(|e| anyhow!("{e}"))?;
    }
    node.start_mesh(MeshOptions { heartbeat_interval_ms: 1000, ..MeshOptions::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let token = meshsync_api::load_or_create_token(&dir)?;
    let config = Config {
        name: name.to_string(),
        api: listener.local_addr()?,
        listen: "127.0.0.1:0".parse()?,
        mdns: false,
        ..Config::default()
    };
    let state = meshsync_api::ApiState::new(node.clone(), config, None, token.clone());
    tokio::spawn(meshsync_api::serve(listener, state, std::future::pending()));
    Ok(DemoNode { name, node, url: format!("http://127.0.0.1:{port}/?token={token}") })
}

async fn run(keep_dir: bool) -> Result<()> {
    let started = Instant::now();
    let base = tempfile::Builder::new().prefix("meshsync-demo-").tempdir()?;
    println!("meshsync demo: three shop tills on this machine, syncing over mutual TLS on loopback");
    println!("data in {}\n", base.path().display());

    let till1 = start(base.path(), "till-1", None).await?;
    let invite = InviteOptions { uses: 2, ..InviteOptions::default() };
    let code = till1.node.mesh().expect("mesh started").create_invite(&invite).map_err(|e| anyhow!("{e}"))?.0;
    println!("[1/4] till-1 created the group and an invite code:\n      {}…\n", &code[..code.len().min(48)]);
    let till2 = start(base.path(), "till-2", Some(&code)).await?;
    let till3 = start(base.path(), "till-3", Some(&code)).await?;
    let tills = [&till1, &till2, &till3];
    print!("[2/4] till-2 and till-3 join with the code ");
    wait(Duration::from_secs(20), || tills.iter().all(|t| t.node.mesh().is_some_and(|m| m.connected() == 2))).await?;
    println!("- connected, every till to both others ({} ms)\n", started.elapsed().as_millis());

    println!("[3/4] writing at different tills:");
    let schema = Schema { fields: [("stock".to_string(), Policy::Counter)].into(), ..Schema::default() };
    for till in tills {
        till.node.declare_schema("products", schema.clone()).map_err(|e| anyhow!("{e}"))?;
    }
    till1
        .node
        .declare_schema("sales", Schema { append_only: true, ..Schema::default() })
        .map_err(|e| anyhow!("{e}"))?;
    for (id, name, price) in PRODUCTS {
        till1
            .node
            .put("products", id, json!({"name": name, "price": price, "stock": 50}))
            .map_err(|e| anyhow!("{e}"))?;
    }
    println!("      till-1: {} products, 50 of each in stock", PRODUCTS.len());
    wait(Duration::from_secs(20), || tills.iter().all(|t| t.node.get("products", "soap").ok().flatten().is_some()))
        .await?;
    let mut sold = 0;
    for (i, till) in [&till2, &till3].into_iter().enumerate() {
        for (n, (id, _, _)) in PRODUCTS.iter().enumerate().take(6) {
            let qty = 1 + ((n + i) % 3) as i64;
            till.node.incr("products", id, "stock", json!(-qty)).map_err(|e| anyhow!("{e}"))?;
            till.node
                .append("sales", None, json!({"product": id, "qty": qty, "till": till.name}))
                .map_err(|e| anyhow!("{e}"))?;
            sold += qty;
        }
        println!("      {}: 6 sales, stock decremented as they happen", till.name);
    }
    till2.node.put("products", "tea", json!({"price": 2.75})).map_err(|e| anyhow!("{e}"))?;
    till3.node.put("products", "tea", json!({"price": 2.9})).map_err(|e| anyhow!("{e}"))?;
    println!("      till-2 and till-3 change the price of tea at the same moment (a real conflict)\n");

    let expected_stock = 50 * PRODUCTS.len() as i64 - sold;
    print!("[4/4] converging ");
    let converge_started = Instant::now();
    wait(Duration::from_secs(30), || {
        tills.iter().all(|t| {
            let stock: i64 = PRODUCTS
                .iter()
                .filter_map(|(id, _, _)| t.node.get("products", id).ok().flatten())
                .filter_map(|r| r.fields.get("stock").and_then(|v| v.as_f64()).map(|v| v as i64))
                .sum();
            let sales = t
                .node
                .list("sales", &meshsync_node::ListQuery { limit: 1000, ..Default::default() })
                .map(|p| p.records.len())
                .unwrap_or(0);
            stock == expected_stock && sales == 12 && t.node.conflicts(10).map(|c| c.len()).unwrap_or(0) == 1
        })
    })
    .await?;
    println!("- done in {} ms", converge_started.elapsed().as_millis());
    for till in tills {
        let tea =
            till.node.get("products", "tea").ok().flatten().map(|r| r.fields["price"].to_json()).unwrap_or_default();
        println!("      {}: total stock {expected_stock}, 12 sales, tea at {tea} with 1 conflict to review", till.name);
    }
    println!("\nDashboards (each till's own API):");
    for till in tills {
        println!("  {}  {}", till.name, till.url);
    }
    println!(
        "\nTry: meshsync status --api {} --token <token in the URL>",
        till1.url.split("/?").next().unwrap_or_default()
    );
    println!("Press Ctrl-C to stop the demo.");
    tokio::signal::ctrl_c().await?;
    println!("\nstopping");
    for till in tills {
        let node = till.node.clone();
        tokio::task::spawn_blocking(move || node.close()).await?;
    }
    if keep_dir {
        let kept = base.keep();
        println!("data kept in {}", kept.display());
    }
    Ok(())
}

async fn wait(limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut dots = 0;
    while !check() {
        if Instant::now() > deadline {
            println!();
            return Err(anyhow!(
                "the demo nodes did not get there within {} s; run with RUST_LOG=info for details",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        dots += 1;
        if dots % 5 == 0 {
            use std::io::Write;
            print!(".");
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}
