//! `fake-upstream`: the fake LLM provider as a standalone server, for manual
//! testing and load tests.

use clap::Parser;

#[derive(Parser)]
#[command(about = "A fake OpenAI/Azure/Anthropic upstream answering from Meridian's fixtures")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 9000)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    println!(
        "fake upstream listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        meridian_loadtest::fake_upstream::router_for_binary(),
    )
    .await?;
    Ok(())
}
