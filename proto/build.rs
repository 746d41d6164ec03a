//! Compiles the `.proto` files with protox (pure Rust, so no system `protoc`)
//! and generates prost messages plus tonic clients and servers into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Paths are relative to the include directory, as `import` lines will be.
    let files = protox::compile(
        [
            "meridian/raft/v1/raft.proto",
            "meridian/gossip/v1/gossip.proto",
            "meridian/sync/v1/sync.proto",
            "meridian/rights/v1/rights.proto",
            "meridian/spend/v1/spend.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Transport helpers (`Client::connect`) would dial TCP themselves;
        // callers build channels through their injected connectors instead.
        .build_transport(false)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
