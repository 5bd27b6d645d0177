//! A shop's till, embedded: declare schemas, sell, restock, watch changes, and see a conflict
//! between two tills resolved. Run with `cargo run -p meshsync-node --example shop`.

use meshsync_node::{Event, ListQuery, Node, Policy, Schema, StoreEvent};
use meshsync_store::{RemoteBatch, ScopeFilter};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::temp_dir().join(format!("meshsync-shop-example-{}", std::process::id()));
    let till1 = Node::open(base.join("till-1"))?;
    let till2 = Node::open(base.join("till-2"))?;
    println!("till 1 is {}\ntill 2 is {}", till1.device_id(), till2.device_id());

    // Stock is a counter so that sales at two tills add up; sales are immutable events.
    till1.declare_schema(
        "products",
        Schema { fields: [("stock".into(), Policy::Counter)].into(), ..Schema::default() },
    )?;
    till1.declare_schema("sales", Schema { append_only: true, ..Schema::default() })?;

    let mut events = till2.subscribe();
    till1.put("products", "tea", json!({"name": "Green tea", "price": 2.5, "stock": 40}))?;
    sync(&till1, &till2)?;

    // Both tills sell tea while apart.
    till1.incr("products", "tea", "stock", json!(-2))?;
    till1.append("sales", None, json!({"product": "tea", "qty": 2, "till": 1}))?;
    till2.incr("products", "tea", "stock", json!(-5))?;
    till2.append("sales", None, json!({"product": "tea", "qty": 5, "till": 2}))?;
    // And both change the price: a real conflict, kept for a person to decide.
    till1.put("products", "tea", json!({"price": 2.75}))?;
    till2.put("products", "tea", json!({"price": 2.9}))?;

    sync(&till1, &till2)?;
    sync(&till2, &till1)?;

    let tea = till1.get("products", "tea")?.expect("tea exists");
    println!(
        "after sync: stock {} (40 - 2 - 5), price {} with {} conflict(s)",
        tea.fields["stock"].to_json(),
        tea.fields["price"].to_json(),
        tea.conflicts
    );
    let sales = till1.list("sales", &ListQuery::default())?;
    println!("sales recorded: {}", sales.records.len());
    for conflict in till1.conflicts(10)? {
        println!(
            "conflict on {}/{}.{}: kept {} from {}, lost {} from {}",
            conflict.collection,
            conflict.record,
            conflict.field,
            conflict.kept.value.to_json(),
            conflict.kept.device.short(),
            conflict.lost.value.to_json(),
            conflict.lost.device.short()
        );
        till1.resolve(&conflict.id, Some(json!(2.8)))?;
    }
    sync(&till1, &till2)?;
    println!(
        "till 2 sees price {} and {} conflict(s)",
        till2.get("products", "tea")?.expect("tea").fields["price"].to_json(),
        till2.conflicts(10)?.len()
    );

    let changes = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, Event::Store(StoreEvent::RecordChanged { .. })))
        .count();
    println!("till 2 saw {changes} record changes on its event stream");
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

/// Sends `to` whatever `from` has that `to` lacks. Real nodes do this over mutual TLS.
fn sync(from: &Node, to: &Node) -> Result<(), Box<dyn std::error::Error>> {
    let vv = to.store().version_vector()?;
    let changes = from.store().changes_since(&vv, ScopeFilter::All)?.collect::<Result<Vec<_>, _>>()?;
    to.store().apply_remote(RemoteBatch::in_order(changes))?;
    Ok(())
}
