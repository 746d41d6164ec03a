//! What one routing decision costs, per strategy and group size: measured
//! in memory on one thread (`node/src/router/bench.rs`). Built as an example
//! so the measurement stays out of the `meridian` binary; `meridian-loadtest
//! compare` runs it from beside the binary it compares.
//!
//! ```text
//! cargo run -p meridian-node --example router_cost [-- --json]
//! ```

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let costs = meridian_node::router::bench::run(&[1, 4, 16], 200_000);
    if json {
        match serde_json::to_string(&costs) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    for c in &costs {
        println!(
            "{:<24} {:>3} deployments {:>8.0} ns per choice",
            c.strategy, c.deployments, c.ns_per_choice
        );
    }
}
